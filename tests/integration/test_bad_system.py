"""Bad system files are refused before anything starts: one line, file:line, key, exit 2."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
import wasmtime

from tests.conftest import EXAMPLES, ROOT, read_line, run_wsuper

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
    # "~/x.wasm" was ".../~/x.wasm does not exist", not that ~ means nothing here
    "module_under_tilde": (GOOD.replace(CALC, "~/calc.wat"), 5, "compartments.calc.module",
                           "(no ~ and no variable but ${SYSTEM_DIR} is expanded in a path"),
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


LONG = "k" * 100_000


@pytest.mark.parametrize("text, line, shown", [
    (GOOD + f"{LONG} = 1\n", 7, "compartments.calc." + "k" * 64 + "... (100000 characters)"),
    (f"[compartments.{LONG}]\nmodule = 'x.wat'\n", 1, "compartments." + "k" * 64 + "..."),
    (GOOD + f"[compartments.calc.grants.{LONG}]\ncompartment = 'calc'\n", 7,
     "compartments.calc.grants." + "k" * 64 + "..."),
    # escaped: its own line, the key read as TOML reads it (it was its table's line)
    (GOOD + f'"{LONG}\\n\\u001b\'\\\\" = 1\n', 7, "compartments.calc.kkk"),
    (GOOD.replace(CALC, "/" + LONG), 5, "compartments.calc.module: '/kkk"),
])
def test_an_error_shows_a_hostile_key_or_value_cut_short_on_one_line(tmp_path, text, line,
                                                                     shown):
    """Keys and values come from the file: one of 100,000 characters is named, cut,
    never echoed whole (an error line is at most ~2,000 characters)."""
    path = tmp_path / "system.toml"
    path.write_text(text)
    r = run_wsuper("check", str(path))
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and len(err) < 2200, err[:300]
    assert err.startswith(f"wsuper: error: {path}:{line}: {shown}"), err[:300]


def test_module_importing_anything_else_is_refused_naming_the_import(tmp_path):
    (tmp_path / "m.wat").write_text(
        '(module (import "env" "open" (func (param i32) (result i32))) '
        '(memory (export "memory") 1) (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 2
    assert "imports env.open, which is not granted" in r.stderr
    assert ":2: compartments.m.module:" in r.stderr


@pytest.mark.parametrize("export, said", [
    ('(func (export "wsuper_dispatch") (param i32) (result i32) (i32.const 0))',
     "exports wsuper_dispatch with the wrong type: expected func ['i32', 'i64', 'i32', "
     "'i32', 'i32'] -> ['i32'], found ['i32'] -> ['i32']"),
    ('(global (export "wsuper_dispatch") i32 (i32.const 0))',
     "exports wsuper_dispatch, but not as a function"),
    ('(func (export "_start") (param i32))', "exports _start with the wrong type"),
    ('(func (export "_initialize") (result i32) (i32.const 0))',
     "exports _initialize with the wrong type"),
])
def test_an_entry_point_of_the_wrong_kind_or_type_is_refused_by_check_as_by_up(tmp_path, export,
                                                                               said):
    """An outside review: `wsuper check` passed a module whose wsuper_dispatch had the
    wrong type, which only the engine refused at `up`.  Both refuse it now, naming it."""
    (tmp_path / "m.wat").write_text(f'(module (memory (export "memory") 1) {export})')
    (tmp_path / "system.toml").write_text(
        '[system]\nschemas = ["' + EXAMPLES + '/calc.capnp"]\n'
        '[compartments.m]\nmodule = "m.wat"\nexports = "Calc"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2 and said in r.stderr, (command, r.stderr)


@pytest.mark.parametrize("export", [
    '(global (export "memory") i32 (i32.const 0))',
    '(table (export "memory") 1 funcref)',
    '(func (export "memory"))',
])
def test_memory_exported_as_something_else_is_refused_by_check_as_by_up(tmp_path, export):
    """docs/guest-abi.md: every pointer is into the export `memory`, and an export
    of that name of another kind is refused.  A global, table or function named
    `memory` passed `check` and `up`; the module's real memory then went
    unnamed, and every host call that takes a pointer trapped 'no memory to use'."""
    (tmp_path / "m.wat").write_text(f'(module (memory 1) {export} (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2 and "m.wat exports memory, but not as a memory" in r.stderr, \
            (command, r.stderr)


def test_the_engine_refuses_memory_exported_as_something_else_itself(tmp_path):
    """The same, when an engine is asked to run such a module without preflight."""
    from compartments.engine import Engine, EngineError
    from compartments.spec import EngineSpec
    from fuzz.hostmem import Recorded
    (tmp_path / "m.wat").write_text('(module (memory 1) (global (export "memory") i32 '
                                    '(i32.const 0)) (func (export "_start")))')
    with pytest.raises(EngineError, match="exports memory, but not as a memory"):
        Engine(Recorded(), EngineSpec(name="m", module=str(tmp_path / "m.wat")))


@pytest.mark.parametrize("body, said", [
    ('(memory (export "memory") 1 1 shared)',
     "its memory 0 is shared (wsuper's engines run without shared memory)"),
    ('(memory (export "memory") 1) (memory 1 2 shared)', "its memory 1 is shared"),
    ('(memory (export "memory") 1) (data (i32.const 65530) "0123456789")',
     "its data segment 0 at [0xfffa, 0x10004) lies past the end of memory 0 (65536 bytes "
     "when it starts)"),
    ('(global $g i32 (i32.const 65536)) (memory (export "memory") 1) (memory 2) '
     '(data (memory 1) (offset (i32.add (global.get $g) (i32.const 65535))) "ab")',
     "its data segment 0 at [0x1ffff, 0x20001) lies past the end of memory 1"),
    ('(memory (export "memory") 1) (table 1 funcref) (table 2 funcref) (func $f) '
     '(elem (table 1) (i32.const 1) funcref (ref.func $f) (ref.null func))',
     "its element segment 0 at [1, 3) lies past the end of table 1 (2 elements when it "
     "starts)"),
])
def test_a_module_that_compiles_but_cannot_be_instantiated_is_refused_before_start(
        tmp_path, body, said):
    """wasmtime compiles these, and only instantiation refuses them: `wsuper check`
    passed them, and `up` started an engine that failed, and again at each restart."""
    (tmp_path / "m.wat").write_text(f'(module {body} (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and line.startswith(
            f"wsuper: error: {tmp_path}/system.toml:2: compartments.m.module: "
            f"{tmp_path}/m.wat cannot be instantiated: its ") and said in line, line


@pytest.mark.parametrize("protect_", ["", "protect = false", 'protect = { no_access = "4 KiB" }'])
def test_a_binary_module_named_wat_runs_as_check_said(tmp_path, protect_):
    """Preflight reads a .wat that starts as a binary module does as binary; the
    engines read every .wat as text, so such a module passed `check` and failed
    at every start ('utf-8' codec can't decode ...).  One reader now."""
    (tmp_path / "m.wat").write_bytes(wasmtime.wat2wasm("""(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 4096) "hello \\80\\ff\\n")
      (func (export "_start")
        (i32.store (i32.const 8192) (i32.const 4096)) (i32.store (i32.const 8196) (i32.const 9))
        (drop (call $w (i32.const 1) (i32.const 8192) (i32.const 1) (i32.const 8200)))))"""))
    (tmp_path / "system.toml").write_text(f'[compartments.m]\nmodule = "m.wat"\n{protect_}\n'
                                          '[compartments.m.grants]\nstdout = { host = "log" }\n')
    assert run_wsuper("check", str(tmp_path / "system.toml")).returncode == 0
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 0 and "[m] hello" in r.stdout, r.stdout + r.stderr


def test_not_wasm_is_refused(tmp_path):
    (tmp_path / "m.wasm").write_bytes(b"\0asm\x01\0\0\0\x99 broken")
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
    # its start function traps: only running it can tell
    (tmp_path / "big.wat").write_text('(module (memory (export "memory") 1) (func $f unreachable) '
                                      '(start $f) (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.big]\nmodule = "big.wat"\n'
                                          'restart = "never"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 1
    assert ("wsuper: compartment big failed to start: engine exited with code 3: error: cannot "
            "instantiate") in r.stderr, r.stderr


@pytest.mark.parametrize("memory", ['(memory (export "memory") 32)', "(memory 32)",
                                    '(memory (export "mem") i64 32)'])
def test_a_memory_limit_below_the_modules_own_minimum_is_refused_before_start(tmp_path, memory):
    """Exported as `memory` or not, 32- or 64-bit: a memory not exported as `memory`
    passed `check`, and every start failed."""
    (tmp_path / "big.wat").write_text(f'(module {memory} (func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.big]\nmodule = "big.wat"\n'
                                          '[compartments.big.limits]\nmemory = "1MiB"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2
        assert r.stderr.strip() == (
            f"wsuper: error: {tmp_path}/system.toml:4: compartments.big.limits.memory: "
            f"{tmp_path}/big.wat's memory starts at 32 pages (2097152 bytes), more than the "
            f"limit of 1048576 bytes")


def test_a_table_larger_than_its_limit_is_refused_before_start(tmp_path):
    """Each table counts (wasmtime's limit is per table), its own or one it does not
    export; a .wasm and a .wat alike."""
    wat = ('(module (memory (export "memory") 1) (table 3000 funcref) (table 6000 funcref)'
           ' (func (export "_start")))')
    (tmp_path / "t.wat").write_text(wat)
    (tmp_path / "t.wasm").write_bytes(wasmtime.wat2wasm(wat))
    for module in ("t.wat", "t.wasm"):
        (tmp_path / "system.toml").write_text(f'[compartments.t]\nmodule = "{module}"\n'
                                              '[compartments.t.limits]\n'
                                              'table_elements = 5000\n')
        for command in ("check", "up"):
            r = run_wsuper(command, str(tmp_path / "system.toml"))
            assert r.returncode == 2, r.stderr
            assert r.stderr.strip() == (
                f"wsuper: error: {tmp_path}/system.toml:4: compartments.t.limits."
                f"table_elements: {tmp_path}/{module}'s table 1 starts at 6000 elements, "
                f"more than the limit of 5000 (each table)")
    (tmp_path / "system.toml").write_text('[compartments.t]\nmodule = "t.wasm"\n'
                                          '[compartments.t.limits]\ntable_elements = 6000\n')
    assert run_wsuper("check", str(tmp_path / "system.toml")).returncode == 0


@pytest.mark.parametrize("name,content,expected", [
    ("m.wasm", b"\x7fELF\x02\x01\x01" + bytes(40), "is not a WebAssembly binary: it does "
     "not start with \\0asm (it looks like an ELF executable)"),
    ("m.wat", b"\x7fELF\x02\x01\x01\xff" + bytes(40), "is not WebAssembly text: it is not "
     "UTF-8 (byte 7) (it looks like an ELF executable)"),
    ("m.wasm", b"#!/bin/sh\necho hi\n", "(it looks like a script)"),
    ("m.wat", b"", "is not a valid wasm module: expected at least one module field"),
])
def test_a_module_that_is_not_wasm_says_what_it_is(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "system.toml").write_text(f'[compartments.m]\nmodule = "{name}"\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2 and expected in r.stderr, r.stderr


_HEAD = b"\0asm\x01\0\0\0"
_TYPE = b"\x01\x04\x01\x60\x00\x00"                       # one type: () -> ()


#: Binaries an outside review (r263) gave check: malformed, or well-formed but what an
#: engine cannot be (a component, past wasmtime's limits).  Each is refused with one
#: line naming the file, what is wrong and at which offset.
HOSTILE_BINARIES = {
    "component": (b"\0asm\x0d\0\x01\0" + b"\x01\x08" + _HEAD,
                  "expected a WebAssembly module but was given a WebAssembly component"),
    "leb_overlong": (_HEAD + b"\x01\x80\x80\x80\x80\x80\x00",
                     "integer representation too long (at offset 0xd)"),
    "leb_out_of_range": (_HEAD + b"\x01\xff\xff\xff\xff\x7f", "integer too large (at offset 0xd)"),
    "count_past_limit": (_HEAD + b"\x01\x05\xff\xff\xff\xff\x0f",
                         "types count exceeds limit of 1000000 (at offset 0xa)"),
    "section_past_end": (_HEAD + b"\x01\xff\xff\xff\x07\x01", "unexpected end-of-file"),
    "truncated_header": (_HEAD[:6], "unexpected end-of-file (at offset 0x4)"),
    "section_twice": (_HEAD + _TYPE + _TYPE, "section out of order (at offset 0x10)"),
    "locals_past_limit": (_HEAD + _TYPE + b"\x03\x02\x01\x00"
                          + b"\x0a\x0a\x01\x08\x01\xff\xff\xff\xff\x0f\x7f\x0b",
                          "too many locals"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BINARIES))
def test_a_hostile_binary_is_refused_by_check_naming_what_and_where(tmp_path, name):
    content, expected = HOSTILE_BINARIES[name]
    (tmp_path / "m.wasm").write_bytes(content)
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wasm"\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "m.wasm") in err, err
    assert expected in err, err


@pytest.mark.parametrize("text,line,key", [
    ('compartments.calc.module = "calc.wat"\ncompartments.calc.limits.memory = "64 KB"\n',
     2, "compartments.calc.limits.memory"),
    ('[compartments.calc]\nmodule = "calc.wat"\n\n[unknown.table]\nx = 1\n', 4, "unknown"),
    ('[compartments.calc]\nmodule = "calc.wat"\nlimits.memory = "64 KB"\n', 3,
     "compartments.calc.limits.memory"),
])
def test_dotted_keys_and_unknown_tables_keep_their_line(tmp_path, text, line, key):
    (tmp_path / "system.toml").write_text(text)
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"wsuper: error: {tmp_path}/system.toml:{line}: {key}:"), r.stderr


def test_error_lines_name_files_absolutely_however_they_were_given(tmp_path):
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = 3\n')
    r = run_wsuper("check", "system.toml", cwd=tmp_path)
    assert r.stderr.startswith(f"wsuper: error: {tmp_path}/system.toml:2: "), r.stderr


def test_a_subdir_that_is_missing_or_a_link_is_refused_by_check(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    for subdir, reason in (("nope", "is not an existing directory"),
                           ("link", "is a symbolic link")):
        if subdir == "link":
            os.symlink(tmp_path, tmp_path / "data" / "link")
        (tmp_path / "system.toml").write_text(
            '[compartments.m]\nmodule = "m.wat"\n[compartments.m.grants]\n'
            f'd = {{ host = "directory", path = "{tmp_path}/data", subdir = "{subdir}" }}\n')
        r = run_wsuper("check", str(tmp_path / "system.toml"))
        assert r.returncode == 2
        assert r.stderr.strip() == (f"wsuper: error: {tmp_path}/system.toml:4: "
                                    f"compartments.m.grants.d.subdir: {tmp_path}/data/{subdir} "
                                    f"{reason}" + ("; subdir must name a real directory"
                                                   if subdir == "link" else ""))


SCHEMAS = {"syntax.capnp": ("@0xbf5147cbbecf40c1;\ninterface Foo {\n  bar @0 ( -> ();\n}\n",
                            ":3: Parse error."),
           "noid.capnp": ("interface Foo {\n  bar @0 () -> ();\n}\n",
                          ":1: File does not declare an ID.")}


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


#: Files that parse alone, and abort pycapnp's parser in a process that loaded
#: another first (one table of ids per process): an interface written with the
#: id of one in host.capnp (loaded by every wsuper process), and a copy of a
#: schema listed before it.
COLLIDING = {"host_id": ("@0xf0e7afc40966bc32;\ninterface Evil @0xa05a5e2c6b2f6d01 {\n"
                         "  write @0 (text :Text) -> ();\n}\n",
                         ":2: Duplicate ID @0xa05a5e2c6b2f6d01."),
             "copy": (open(SCHEMA).read(), ":1: Duplicate ID @0xf0e7afc40966bc30.")}


@pytest.mark.parametrize("case,command", [(c, cmd) for c in sorted(COLLIDING)
                                           for cmd in ("check", "up", "bindgen")
                                           if (c, cmd) != ("copy", "bindgen")])
def test_a_schema_whose_ids_were_loaded_before_is_an_error_not_an_abort(tmp_path, case,
                                                                          command):
    """The child that parses a schema first parsed it alone: a file whose ids
    collide with one the supervisor had loaded before passed there and then
    aborted `wsuper up`, `check` and `bindgen` themselves (exit 134, "terminate
    called").  The child now parses the files loaded before it first.  (bindgen
    loads one schema only: a copy of calc.capnp is no collision there.)"""
    text, expected = COLLIDING[case]
    (tmp_path / "x.capnp").write_text(text)
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) '
                                    '(result i32) i32.const 0))')
    (tmp_path / "system.toml").write_text(f'[system]\nschemas = ["{SCHEMA}", "x.capnp"]\n'
                                          f'[compartments.m]\nmodule = "m.wat"\n'
                                          f'exports = "Calc"\n')
    args = {"check": ["check", str(tmp_path / "system.toml")],
            "up": ["up", str(tmp_path / "system.toml")],
            "bindgen": ["bindgen", str(tmp_path / "x.capnp"), "-o", str(tmp_path / "out")]}
    r = run_wsuper(*args[command])
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {tmp_path / 'x.capnp'}{expected}"), line
    assert "terminate called" not in r.stderr


def test_a_schema_rewritten_in_place_with_its_size_and_time_kept_is_checked_again(tmp_path):
    """A schema that parsed once was known by its path, size and modification time:
    rewritten in place to the same size with its time kept (`cp -p`, `touch -r`),
    it was loaded again unchecked (pycapnp's parser aborts the process on a bad
    file).  The change time, which no one sets, says it changed.  (In a child: an
    abort there must not end the test run.)"""
    import subprocess
    import sys
    good = "@0xbf5147cbbecf40c1;\ninterface Foo {\n  bar @0 () -> ();\n}\n"
    bad = SCHEMAS["syntax.capnp"][0]
    good, bad = good.ljust(len(bad)), bad.ljust(len(good))
    path = tmp_path / "s.capnp"
    path.write_text(good)
    code = f"""if True:
        import os, time, capnp_schemas
        path = {str(path)!r}
        capnp_schemas.load(path)
        capnp_schemas.load(path)       # known now, after the files loaded before it
        st = os.stat(path)
        time.sleep(0.01)
        with open(path, "r+") as f:
            f.write({bad!r})
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        try:
            capnp_schemas.load(path)
        except capnp_schemas.SchemaError as e:
            print("refused:", e)
        else:
            print("loaded")
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(SCHEMA)))
    assert r.returncode == 0 and r.stdout.startswith(
        f"refused: {path}{SCHEMAS['syntax.capnp'][1]}"), r.stdout + r.stderr


def test_the_zygote_parses_a_schema_in_a_child_and_lives_on(tmp_path):
    """`wsuper up` has the zygote parse each schema file (compartments/zygote.py)
    in a child of its own, not a new interpreter: what the parser says of a bad
    file comes back as an answer, an abort included, and a good one parses."""
    import json

    import capnp_schemas
    from compartments import zygote

    def ask(path) -> dict:
        line = json.dumps({"schema": str(path), "imports": [str(path.parent),
                                                            *capnp_schemas.IMPORT_PATH]})
        return zygote._parse_schema(line.encode(), [])
    for name, (text, expected) in SCHEMAS.items():
        (tmp_path / name).write_text(text)
        answer = ask(tmp_path / name)
        assert answer["schema"] != 0, answer
        with pytest.raises(capnp_schemas.SchemaError) as e:
            capnp_schemas._check_parsed(str(tmp_path / name), answer["schema"], answer["stderr"])
        assert str(e.value).startswith(f"{tmp_path / name}{expected}"), str(e.value)
    assert ask(Path(SCHEMA)) == {"schema": 0, "stderr": ""}
    assert "error" in zygote._parse_schema(b'{"schema": 1, "imports": []}', [])
    # after the files loaded before it: a copy of one of them aborts that child only
    (tmp_path / "copy.capnp").write_text(open(SCHEMA).read())
    line = json.dumps({"schema": str(tmp_path / "copy.capnp"),
                       "imports": [str(tmp_path), *capnp_schemas.IMPORT_PATH],
                       "before": [[SCHEMA, [os.path.dirname(SCHEMA),
                                            *capnp_schemas.IMPORT_PATH]]]})
    answer = zygote._parse_schema(line.encode(), [])
    assert answer["schema"] != 0 and "Duplicate ID" in answer["stderr"], answer
    for bad in ('"before": [[1, []]]', '"before": [["x"]]', '"before": "x"'):
        assert "error" in zygote._parse_schema(
            ('{"schema": "x", "imports": [], %s}' % bad).encode(), [])


def test_a_schema_is_parsed_alike_in_a_fork_and_in_a_new_interpreter(tmp_path):
    """Without a zygote (`wsuper check`, `call`, `bindgen`), a schema is parsed in a
    fork of the command while it runs one thread, else in a new interpreter (its
    start and imports were ~0.12 s of each check).  Both answer alike: a good file,
    each bad one, the parser's abort (a copy of a file loaded before it), with the
    error each names; and a second thread sends it to the new interpreter.  (In a
    process of its own: this one runs more than one thread.)"""
    import json
    import subprocess
    import sys
    for name, (text, _expected) in SCHEMAS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "copy.capnp").write_text(open(SCHEMA).read())
    cases = [[str(tmp_path / name), [str(tmp_path)], []] for name in sorted(SCHEMAS)]
    cases.append([SCHEMA, [os.path.dirname(SCHEMA)], []])
    cases.append([str(tmp_path / "copy.capnp"), [str(tmp_path)],
                  [[SCHEMA, [os.path.dirname(SCHEMA)]]]])
    code = """if True:
        import json, sys, threading, capnp_schemas as c
        out = {"one thread": c._one_thread()}
        for i, (path, dirs, before) in enumerate(json.loads(sys.argv[1])):
            dirs = dirs + list(c.IMPORT_PATH)
            for how, parse in (("fork", c._parse_in_fork), ("new", c._parse_in_interpreter)):
                code, text = parse([path, dirs, before])
                try:
                    c._check_parsed(path, code, text)
                    said = None
                except c.SchemaError as e:
                    said = str(e)
                out[f"{i} {how}"] = [code, said]
        threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()
        out["two threads"] = c._one_thread()
        print(json.dumps(out))
    """
    r = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["one thread"] is True and out["two threads"] is False
    def same(answer):                  # the id the parser suggests is a random one
        return [answer[0], answer[1] and re.sub("@0x[0-9a-f]{16};$", "@0x...;", answer[1])]
    for i, (path, _dirs, _before) in enumerate(cases):
        fork, new = out[f"{i} fork"], out[f"{i} new"]
        assert same(fork) == same(new), (path, fork, new)
    expected = [f"{tmp_path / name}{SCHEMAS[name][1]}" for name in sorted(SCHEMAS)]
    assert [out[f"{i} fork"][1][:len(e)] for i, e in enumerate(expected)] == expected
    assert out[f"{len(SCHEMAS)} fork"] == [0, None]                       # the good one
    code, said = out[f"{len(SCHEMAS) + 1} fork"]                           # the abort
    assert code < 0 and "Duplicate ID" in said, (code, said)


#: A schema whose parse does not end: it embeds a FIFO no one writes (closure() refuses
#: one; _parse_in_fork, called directly, is given it), whose open waits for a writer.
NEVER_ENDS = '@0xbf5147cbbecf40c4;\nconst x :Data = embed "never.bin";\n'


def _parsing_child(pid: int) -> int:
    """The child of `pid` once it waits, in its parse, for a writer of the FIFO."""
    for _ in range(6000):
        try:
            kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            if kids and open(f"/proc/{kids[0]}/wchan").read() == "wait_for_partner":
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{pid} has no child waiting for a FIFO's writer after 60 s")


def _ended(pid: int, within: float = 30) -> bool:
    """Whether process `pid` ends (is gone, or a zombie) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def _release(fifo) -> None:
    """A writer of `fifo` that goes at once: a child still waiting to read it reads nothing."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass                            # no reader left: nothing waits


@pytest.mark.parametrize("how", ["fork", "interpreter"])
def test_a_command_stopped_while_a_child_parses_its_schema_does_not_wait_for_it(tmp_path, how):
    """A command stopped (Ctrl-C, `up`'s StoppedAtStart) while a child parses its schema
    ends it and goes: a fork was waited for until its parse ended (for ever here),
    where subprocess.run kills the new interpreter."""
    import signal
    os.mkfifo(tmp_path / "never.bin")
    (tmp_path / "s.capnp").write_text(NEVER_ENDS)
    code = f"""if True:
        import sys, capnp_schemas as c
        c.PARSE_SECONDS = 3600
        c._parse_in_{how}([sys.argv[1], list(c.IMPORT_PATH), []])
    """
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.capnp")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = _parsing_child(p.pid)
        os.kill(p.pid, signal.SIGINT)             # the command alone, not its child
        _out, err = p.communicate(timeout=60)
        assert p.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err[-2000:]
        if how == "fork":
            assert not os.path.exists(f"/proc/{child}")       # ended, and waited for
        else:
            # killed, and not waited for: subprocess.run waits for no child after a
            # KeyboardInterrupt (it kills it), so its end is reaped by whoever adopts
            # it once the command is gone, which on a loaded machine may come later
            assert _ended(child), f"the parser {child} runs on after its command ended"
    finally:
        p.kill()
        _release(tmp_path / "never.bin")
        p.communicate()


@pytest.mark.parametrize("how", ["fork", "interpreter"])
def test_a_child_that_parses_a_schema_takes_signals_as_a_new_interpreter(tmp_path, how):
    """The child that parses a schema takes each signal as a new interpreter would:
    one the command ignores stays ignored (SIGINT of `wsuper up &` in a script: the
    fork took Ctrl-C of the script's foreground, and up refused its system with "the
    schema parser crashed (SIGINT)"), and one it handles in Python (up's
    StoppedAtStart for SIGTERM and SIGHUP) is the default's (the fork ran up's
    handler, only once the parse was over: a SIGTERM to every process of the
    service did not end it)."""
    import signal
    os.mkfifo(tmp_path / "never.bin")
    (tmp_path / "s.capnp").write_text(NEVER_ENDS)
    code = f"""if True:
        import signal, sys, capnp_schemas as c
        from supervisor import startsignals
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a script's background job
        startsignals.stop_at_start()                    # as `wsuper up` does
        c.PARSE_SECONDS = 3600
        print(c._parse_in_{how}([sys.argv[1], list(c.IMPORT_PATH), []])[0])
    """
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.capnp")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        child = _parsing_child(p.pid)
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)        # taken after SIGINT (ascending numbers)
        _release(tmp_path / "never.bin")      # before: the handler ran once it read it
        out, err = p.communicate(timeout=60)
        assert (p.returncode, out.strip()) == (0, str(-signal.SIGTERM)), (out, err[-2000:])
    finally:
        p.kill()
        _release(tmp_path / "never.bin")
        p.communicate()


def test_a_command_started_with_sigchld_ignored_waits_for_its_children(tmp_path):
    """A wsuper command whose parent ignores SIGCHLD (inherited through exec) reads its
    children's exit status all the same: `check` failed with "cannot check the
    schema: No child processes" for a good system (with "cannot wait for its
    compiler" before 5539823), and a schema that aborts the parser is an error."""
    launcher = ("import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
                "os.execv(sys.executable, [sys.executable, '-m', 'supervisor.cli', *sys.argv[1:]])")
    def ignoring(*args):
        return subprocess.run([sys.executable, "-c", launcher, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    r = ignoring("check", os.path.join(EXAMPLES, "hello.toml"))
    assert r.returncode == 0 and "No child processes" not in r.stderr, r.stderr[-2000:]
    text, expected = SCHEMAS["syntax.capnp"]
    (tmp_path / "syntax.capnp").write_text(text)
    r = ignoring("bindgen", str(tmp_path / "syntax.capnp"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {tmp_path / 'syntax.capnp'}{expected}"), line


def test_a_schemas_fork_holds_no_descriptor_of_the_command_while_it_parses(tmp_path):
    """The fork that parses a schema holds none of the command's descriptors while it
    parses, as a new interpreter would not: not a lock the command holds (up's),
    not one numbered near the limit, not an inheritable one: its stdin and stdout
    are /dev/null, its stderr the command's pipe of its answer, and the rest are
    what the parser opened.  (Passes on 5539823: a guard for closerange.)"""
    os.mkfifo(tmp_path / "never.bin")
    (tmp_path / "s.capnp").write_text(NEVER_ENDS)
    code = """if True:
        import fcntl, os, resource, sys, capnp_schemas as c
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        high = min(hard, 1 << 20) - 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (high + 1, hard))
        r, w = os.pipe()
        os.dup2(w, high, inheritable=True)
        lock = open(sys.argv[2], "w")
        fcntl.flock(lock, fcntl.LOCK_EX)                 # as up's lock
        print(os.fstat(high).st_ino, high, flush=True)
        c.PARSE_SECONDS = 3600
        print(c._parse_in_fork([sys.argv[1], list(c.IMPORT_PATH), []])[0])
    """
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.capnp"),
                          str(tmp_path / "lock")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pipe, high = read_line(p).split()
        child = _parsing_child(p.pid)
        held = {int(fd): os.readlink(f"/proc/{child}/fd/{fd}")
                for fd in os.listdir(f"/proc/{child}/fd")}
        assert held[0] == held[1] == os.devnull and held[2].startswith("pipe:"), held
        assert int(high) not in held and f"pipe:[{pipe}]" not in held.values(), held
        assert str(tmp_path / "lock") not in held.values(), held
        opened = {v for fd, v in held.items() if fd > 2}
        assert all(v.startswith("/") for v in opened), held     # files and directories
        _release(tmp_path / "never.bin")
        out, err = p.communicate(timeout=60)
        assert out.strip() == "0", err[-2000:]
    finally:
        p.kill()
        _release(tmp_path / "never.bin")
        p.communicate()


def test_a_schemas_fork_says_its_error_on_its_own_stderr(tmp_path):
    """What the fork that parses a schema says of an exception (a file the parser
    refuses to load, as pycapnp refuses a name not ending in .capnp) is its answer,
    whatever this process's sys.stderr is (a program that loads schemas and
    captures its stderr, as pytest does): it went through that object, a StringIO
    here, and the answer said only "the schema parser failed (exit 1)".  Nor is
    what this process wrote there part of the answer."""
    import json

    import capnp_schemas
    code = """if True:
        import io, json, sys, capnp_schemas as c
        sys.stderr = io.StringIO()
        sys.stderr.write("the command's own text, not flushed")
        args = [sys.argv[1], list(c.IMPORT_PATH), []]
        print(json.dumps([c._parse_in_fork(args), c._parse_in_interpreter(args)]))
    """
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.capnp")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    fork, new = json.loads(r.stdout)
    assert fork[0] == new[0] == 1, (fork, new)
    assert f"File not found: {tmp_path / 'missing.capnp'}" in fork[1], fork
    assert "not flushed" not in fork[1], fork
    for answer in (fork, new):
        with pytest.raises(capnp_schemas.SchemaError) as e:
            capnp_schemas._check_parsed(str(tmp_path / "missing.capnp"), *answer)
        assert str(e.value).endswith(f"OSError: File not found: {tmp_path / 'missing.capnp'}")


def test_a_schema_is_still_checked_when_the_zygote_cannot_answer(tmp_path, monkeypatch):
    """A zygote that is gone before `wsuper up` asked it to parse a schema: the file
    is parsed by a new interpreter instead, and that zygote is discarded."""
    import capnp_schemas
    from supervisor.launch import Launched
    launched = Launched()
    launched.popen.kill()
    launched.popen.wait()
    monkeypatch.setattr(capnp_schemas, "parse_elsewhere", launched.parse_schema)
    monkeypatch.setattr(capnp_schemas, "_CHECKED", {})
    (tmp_path / "noid.capnp").write_text(SCHEMAS["noid.capnp"][0])
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(tmp_path / "noid.capnp"))
    assert str(e.value).startswith(f"{tmp_path / 'noid.capnp'}{SCHEMAS['noid.capnp'][1]}")
    assert launched.sock is None


def test_a_start_function_that_traps_says_so(tmp_path):
    (tmp_path / "st.wat").write_text('(module (memory (export "memory") 1) '
                                     '(func $boom unreachable) (start $boom))')
    (tmp_path / "system.toml").write_text('[compartments.st]\nmodule = "st.wat"\nrestart = "never"\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 1
    assert ("its start function trapped: wasm `unreachable` instruction executed (in boom)"
            in r.stderr), r.stderr


def test_no_grant_reaches_the_supervisors_own_files(tmp_path):
    """Through a grant a compartment could read every call's audit record, forge
    records, or plant a link where the supervisor writes its logs: a grant that
    is, holds or lies inside one of the supervisor's own paths is refused, however
    the path is spelled (a symlinked parent, a subdir)."""
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    (tmp_path / "box" / "logs" / "deeper").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    os.symlink(tmp_path, tmp_path / "up")           # a symlinked parent
    (tmp_path / "box" / "audit.jsonl").write_text("")
    (tmp_path / "box" / "audit.jsonl.3").write_text("")
    cases = [  # ([system] lines, grant, the supervisor's path named in the error)
        ('audit = "box/audit.jsonl"', f'host = "file", path = "{tmp_path}/box/audit.jsonl.3"',
         f"rotated audit file {tmp_path}/box/audit.jsonl.3"),
        # whatever rotation is now: a run before may have left them
        ('audit = "box/audit.jsonl"\naudit_max_size = 0',
         f'host = "file", path = "{tmp_path}/up/box/audit.jsonl.3", read_only = true',
         "rotated audit file"),
        ('audit = "box/audit.jsonl"\naudit_keep = 2',
         f'host = "file", path = "{tmp_path}/box/audit.jsonl.3", read_only = true',
         "rotated audit file"),
        ('audit = "box/audit.jsonl"', f'host = "directory", path = "{tmp_path}/up/box"',
         f"audit file {tmp_path}/box/audit.jsonl"),
        ('audit = "box/audit.jsonl"', f'host = "file", path = "{tmp_path}/box/audit.jsonl"',
         "audit file"),
        ('logs = "box/logs"', f'host = "directory", path = "{tmp_path}/box"',
         f"log directory {tmp_path}/box/logs"),
        ('logs = "box/logs"', f'host = "directory", path = "{tmp_path}/box", subdir = "logs"',
         "log directory"),
        ('logs = "box"', f'host = "directory", path = "{tmp_path}/box/logs/deeper"',
         "log directory"),
        ('socket = "box/calc.sock"', f'host = "directory", path = "{tmp_path}/up/box"',
         f"external socket {tmp_path}/box/calc.sock"),
        ('', f'host = "directory", path = "{tmp_path}"',
         f"runtime directory (sockets, lock) {tmp_path}/run/wsuper"),
    ]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for system, grant, named in cases:
        (tmp_path / "system.toml").write_text(
            f'[system]\n{system}\n[compartments.m]\nmodule = "m.wat"\n'
            f'[compartments.m.grants]\nd = {{ {grant} }}\n')
        for command in ("check", "up"):
            r = run_wsuper(command, str(tmp_path / "system.toml"), env=env)
            assert r.returncode == 2, (system, grant, r.stdout, r.stderr)
            line = 6 + system.count("\n")
            assert r.stderr.startswith(f"wsuper: error: {tmp_path}/system.toml:{line}: "
                                       f"compartments.m.grants.d.path: "), r.stderr
            assert f"reaches the supervisor's {named}" in r.stderr, r.stderr
    # beside them, not over them: fine
    (tmp_path / "data").mkdir()
    (tmp_path / "system.toml").write_text(
        f'[system]\naudit = "box/audit.jsonl"\nlogs = "box/logs"\n[compartments.m]\n'
        f'module = "m.wat"\n[compartments.m.grants]\n'
        f'd = {{ host = "directory", path = "{tmp_path}/data" }}\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"), env=env)
    assert r.returncode == 0, r.stderr


def test_no_writable_grant_reaches_a_file_that_decides_what_runs(tmp_path):
    """A module is read again whenever its compartment starts: a compartment that
    could write it (or the directory that names it, or a link on the way) ran its
    own code with the other's grants at the other's next start, and `check
    --reach` said it could not.  The same for the system file, policy files and
    schemas, read at every `wsuper up`.  So a grant that allows changes (not
    read_only) may not reach any of them, however the path is spelled; nor the
    compartment's own module (a module that compiles for minutes holds up every
    other compartment's start)."""
    mod = '(module (memory (export "memory") 1) (func (export "_start")))'
    (tmp_path / "box" / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "box" / "b.wat").write_text(mod)
    (tmp_path / "other" / "c.wat").write_text(mod)
    (tmp_path / "a.wat").write_text(mod)
    (tmp_path / "box" / "calc.capnp").write_text(open(SCHEMA).read())
    (tmp_path / "box" / "policy.toml").write_text('[grants]\nlog = { host = "log" }\n')
    os.symlink("../other", tmp_path / "box" / "via")          # a link on the way
    os.symlink(tmp_path, tmp_path / "up")                     # a symlinked parent
    (tmp_path / "box" / "a.wat").write_text(mod)
    cases = [  # (b's module, [system] lines, b's extra lines, grant, what is named)
        ("box/b.wat", "", "", f'path = "{tmp_path}/box"',
         f"compartment b's module {tmp_path}/box/b.wat"),
        ("box/b.wat", "", "", f'path = "{tmp_path}/up/box", append_only = true', "compartment b's module"),
        ("box/b.wat", "", "", f'host = "file", path = "{tmp_path}/box/b.wat"', "compartment b's module"),
        ("box/via/c.wat", "", "", f'path = "{tmp_path}/box"',
         f"compartment b's module {tmp_path}/box/via/c.wat"),
        ("a.wat", 'schemas = ["box/calc.capnp"]', "", f'path = "{tmp_path}/box"',
         f"the schema file {tmp_path}/box/calc.capnp"),
        ("a.wat", "", 'policy = "box/policy.toml"', f'path = "{tmp_path}/box"',
         f"the policy file {tmp_path}/box/policy.toml"),
        ("a.wat", "", "", f'path = "{tmp_path}/box"', f"the system file {tmp_path}/box/system.toml"),
        # its own module too: a module can be made to compile for minutes, while
        # no other compartment starts
        ("other/c.wat", "", "", f'host = "file", path = "{tmp_path}/a.wat"',
         f"compartment a's module {tmp_path}/a.wat: a module is compiled again"),
    ]
    for module, system, extra, grant, named in cases:
        if not grant.startswith("host"):
            grant = 'host = "directory", ' + grant
        at = tmp_path / "box" if "system file" in named else tmp_path
        (at / "system.toml").write_text(
            f'[system]\n{system}\n[compartments.a]\nmodule = "{tmp_path}/a.wat"\n'
            f'[compartments.a.grants]\nd = {{ {grant} }}\n'
            f'[compartments.b]\nmodule = "{tmp_path}/{module}"\n{extra}\n')
        r = run_wsuper("check", str(at / "system.toml"))
        assert r.returncode == 2, (module, grant, r.stdout, r.stderr)
        assert r.stderr.startswith(f"wsuper: error: {at}/system.toml:6: "
                                   f"compartments.a.grants.d.path: "), r.stderr
        assert f"would let compartment a change {named}" in r.stderr, r.stderr
    # read_only, or beside them: fine
    for module, grant in (("box/b.wat", f'path = "{tmp_path}/box", read_only = true'),
                          ("box/b.wat", f'path = "{tmp_path}/box/sub"')):
        (tmp_path / "system.toml").write_text(
            f'[compartments.a]\nmodule = "box/a.wat"\n[compartments.a.grants]\n'
            f'd = {{ host = "directory", {grant} }}\n[compartments.b]\nmodule = "{module}"\n')
        r = run_wsuper("check", str(tmp_path / "system.toml"))
        assert r.returncode == 0, r.stderr


def test_a_compartment_cannot_rewrite_anothers_module_to_take_its_grants(tmp_path):
    """The attack itself, as it ran before the check: `a` holds a writable
    directory that holds b's module, writes its own code there through WASI, and
    b's next start runs that code with b's grants.  Now `wsuper up` refuses the
    system before anything runs, and b's module is untouched."""
    from supervisor import toolchain
    (tmp_path / "shared").mkdir()
    b = '(module (memory (export "memory") 1) (func (export "_start")))'
    (tmp_path / "shared" / "b.wat").write_text(b)
    (tmp_path / "a.c").write_text(
        '#include <stdio.h>\n'
        'int main(void) {\n'
        '  FILE *f = fopen("/shared/b.wat", "w");\n'
        '  if (!f) return 1;\n'
        '  fputs("(module (memory (export \\"memory\\") 1) (func (export \\"_start\\") '
        'unreachable))", f);\n'
        '  return fclose(f) != 0;\n'
        '}\n')
    toolchain.build([str(tmp_path / "a.c")], str(tmp_path / "a.wasm"))
    (tmp_path / "system.toml").write_text(
        f'[compartments.a]\nmodule = "a.wasm"\n[compartments.a.grants]\n'
        f'shared = {{ host = "directory", path = "{tmp_path}/shared" }}\n'
        f'[compartments.b]\nmodule = "shared/b.wat"\nrestart = "permanent"\n'
        f'max_restarts = 2\n[compartments.b.grants]\nlog = {{ host = "log" }}\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.output
    assert "would let compartment a change compartment b's module" in r.stderr
    assert (tmp_path / "shared" / "b.wat").read_text() == b
    assert "trapped" not in r.output


@pytest.mark.parametrize("name,source,reason", [
    ("types.wat", "(module\n (func (result i32)\n  i32.const 1\n  i32.add))",
     "failed to compile: wasm[0]::function[0]: Invalid input WebAssembly code at offset 26: "
     "type mismatch: expected i32 but nothing on stack"),
    ("syntax.wat", "(module\n  (func $x)\n  (fnc))",
     "expected valid module field (line 3, column 4)"),
    ("cut.wasm", b"\0asm\x01\0\0\0\x05\xff",
     "failed to parse WebAssembly module: unexpected end-of-file (at offset 0xa)"),
])
def test_a_module_that_does_not_compile_says_why_and_where(tmp_path, name, source, reason):
    """wasmtime's first line alone said "failed to compile: wasm[0]::function[0]"
    or "unknown operator or unexpected token": the error now carries its reason
    and, for text, the line and column."""
    (tmp_path / name).write_bytes(source if isinstance(source, bytes) else source.encode())
    (tmp_path / "system.toml").write_text(f'[compartments.m]\nmodule = "{name}"\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"wsuper: error: {tmp_path}/system.toml:2: compartments.m.module: "
                                f"{tmp_path / name} is not a valid wasm module: {reason}")


MOD = '(module (memory (export "memory") 1) (func (export "_start")))'


@pytest.mark.parametrize("kind", ["fifo", "zero"])
@pytest.mark.parametrize("what", ["system file", "policy file", "schema", "import"])
def test_a_file_that_never_ends_is_refused_not_waited_for(tmp_path, kind, what):
    """Opening a FIFO waits for a writer for ever, and /dev/zero has no end: the
    system file, a policy file, a schema and what a schema imports are each read
    only if they are regular files (and not too large); the error names the file
    and the key that leads to it.  (A hang here is caught by the suite's timeout.)"""
    bad = tmp_path / "bad"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        os.symlink("/dev/zero", bad)
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "ok.capnp").write_text('@0xd0a1b2c3d4e5f621;\nusing X = import "bad";\n')
    system = {"system file": None,
              "policy file": '[compartments.m]\nmodule = "m.wat"\npolicy = "bad"\n',
              "schema": '[system]\nschemas = ["bad"]\n[compartments.m]\nmodule = "m.wat"\n',
              "import": '[system]\nschemas = ["ok.capnp"]\n[compartments.m]\nmodule = "m.wat"\n'
              }[what]
    path = bad if system is None else tmp_path / "system.toml"
    if system is not None:
        path.write_text(system)
    named = "a FIFO" if kind == "fifo" else "a device" if what != "import" else \
        "not a regular file"
    for command in ("check", "up"):
        r = run_wsuper(command, str(path), timeout=30)
        assert r.returncode == 2, r.output
        (line,) = r.stderr.strip().splitlines()
        key = {"system file": f"{bad}: ", "policy file": ":3: compartments.m.policy: ",
               "schema": ":2: system.schemas[0]: ",
               "import": ":2: system.schemas[0]: "}[what]
        assert key in line and named in line and str(bad) in line, line


def _check(tmp_path, system, *args):
    (tmp_path / "system.toml").write_text(system)
    return run_wsuper("check", str(tmp_path / "system.toml"), *args)


def test_a_writable_grant_cannot_reach_the_audit_through_a_link_it_could_replace(tmp_path):
    """The audit file's path went through a link inside a writable grant: only
    the real path was compared, so the grant passed, and the compartment could
    point the link elsewhere and have the supervisor write (or create) its
    audit records there."""
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "g").mkdir()
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "g" / "link")
    # the link on the way to the audit's directory, not that directory itself (a link
    # there is refused by `check` and `up` alike, whatever the grants)
    system = (f'[system]\naudit = "g/link/sub/audit.jsonl"\n[compartments.m]\n'
              f'module = "m.wat"\n[compartments.m.grants]\n'
              f'd = {{ host = "directory", path = "{tmp_path}/g" }}\n')
    r = _check(tmp_path, system)
    assert r.returncode == 2, r.output
    assert "compartments.m.grants.d.path" in r.stderr
    assert f"reaches the supervisor's audit file {tmp_path}/elsewhere/sub/audit.jsonl" in r.stderr
    # read only, the link cannot be changed: fine
    r = _check(tmp_path, system.replace(' }', ', read_only = true }'))
    assert r.returncode == 0, r.output


def test_a_writable_grant_cannot_reach_a_schema_that_a_listed_schema_imports(tmp_path):
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "types.capnp").write_text("@0xd0a1b2c3d4e5f622;\nstruct T { x @0 :UInt8; }\n")
    (tmp_path / "top.capnp").write_text('@0xd0a1b2c3d4e5f623;\nusing import "g/types.capnp".T;\n'
                                        'interface I { f @0 (t :T) -> (); }\n')
    system = (f'[system]\nschemas = ["top.capnp"]\n[compartments.m]\nmodule = "m.wat"\n'
              f'[compartments.m.grants]\nd = {{ host = "directory", path = "{tmp_path}/g" }}\n')
    r = _check(tmp_path, system)
    assert r.returncode == 2, r.output
    assert (f"would let compartment m change the schema file {tmp_path}/g/types.capnp "
            f"(which {tmp_path}/top.capnp reads)") in r.stderr, r.stderr
    r = _check(tmp_path, system.replace(' }', ', read_only = true }'))
    assert r.returncode == 0, r.output


def test_a_module_with_another_hard_link_is_refused_beside_a_writable_grant(tmp_path):
    """A second link to b's module inside a's writable directory lets a rewrite
    b's code: that was a warning.  The link cannot be found without reading the
    whole tree, so any extra link on the grant's file system is refused, unless
    the grant refuses hard links or is read-only."""
    (tmp_path / "a.wat").write_text(MOD)
    (tmp_path / "g").mkdir()
    (tmp_path / "b.wat").write_text(MOD)
    os.link(tmp_path / "b.wat", tmp_path / "g" / "copy.wat")
    system = (f'[compartments.a]\nmodule = "a.wat"\n[compartments.a.grants]\n'
              f'd = {{ host = "directory", path = "{tmp_path}/g" }}\n'
              f'[compartments.b]\nmodule = "b.wat"\n')
    r = _check(tmp_path, system)
    assert r.returncode == 2, r.output
    assert f"compartment b's module {tmp_path}/b.wat has 2 hard links" in r.stderr, r.stderr
    for safe in (", refuse_hard_links = true }", ", read_only = true }"):
        r = _check(tmp_path, system.replace(' }', safe))
        assert r.returncode == 0, r.output
    os.unlink(tmp_path / "g" / "copy.wat")
    assert _check(tmp_path, system).returncode == 0


@pytest.mark.parametrize("path", ["/proc", "/proc/1", "/sys/kernel", "/dev/pts"])
@pytest.mark.parametrize("read_only", [False, True])
def test_no_grant_reaches_a_kernel_file_system(tmp_path, path, read_only):
    """Opened by the supervisor, /proc/self is the supervisor itself (its memory
    and descriptors); sysfs writes change the machine."""
    if not os.path.isdir(path):
        pytest.skip(f"no {path} here")
    (tmp_path / "m.wat").write_text(MOD)
    system = (f'[compartments.m]\nmodule = "m.wat"\n[compartments.m.grants]\n'
              f'd = {{ host = "directory", path = "{path}", read_only = {str(read_only).lower()} }}\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml")) if command == "up" else \
            _check(tmp_path, system)
        assert r.returncode == 2, r.output
        assert "compartments.m.grants.d.path" in r.stderr and "kernel's" in r.stderr, r.stderr


def test_check_shows_what_the_file_says_escaped_and_its_graph_cannot_be_forged(tmp_path):
    """mount, args, vars and paths were printed as written: a value could start
    a line of its own or send escape sequences to the terminal, and a quote in
    a mount ended a DOT string and drew an edge of its own."""
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "d").mkdir()
    forged = 'x" ]; "m" -> "root" [label="forged'
    system = (f'[compartments.m]\nmodule = "m.wat"\n[compartments.m.grants]\n'
              f'd = {{ host = "directory", path = "{tmp_path}/d", mount = {forged!r} }}\n'
              f'e = {{ host = "environment", args = ["a\\nwsuper: ok: forged", "\\u001b[2J"], '
              f'vars = {{ "V\\nwsuper: ok: var" = "1" }} }}\n').replace("'", "'''")
    r = _check(tmp_path, system, "--graph", str(tmp_path / "g.dot"))
    assert r.returncode == 0, r.output
    assert "\x1b" not in r.stdout and "\nwsuper: ok: forged" not in r.stdout, r.stdout
    assert "\\x1b[2J" in r.stdout and "a\\nwsuper: ok: forged" in r.stdout, r.stdout
    assert "\nwsuper: ok: var" not in r.stdout and "V\\nwsuper: ok: var" in r.stdout
    dot = (tmp_path / "g.dot").read_text()
    assert "\x1b" not in dot
    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', dot)
    assert outside_strings.count("->") == 2, dot       # d and e; no forged edge
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg", str(tmp_path / "g.dot")], check=True,
                       capture_output=True)


def test_a_socket_path_too_long_for_the_kernel_is_refused_before_start(tmp_path):
    """bind() failed with "AF_UNIX path too long" once everything had started,
    and the line named no key."""
    (tmp_path / "calc.capnp").write_text(open(SCHEMA).read())
    deep = tmp_path / ("d" * 100)
    deep.mkdir(mode=0o700)
    system = GOOD.replace(SCHEMA, str(tmp_path / "calc.capnp")) + \
        'external = true\n'
    system = system.replace("[system]\n", f'[system]\nsocket = "{deep}/calc.sock"\n')
    for command in ("check", "up"):
        (tmp_path / "system.toml").write_text(system)
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, r.output
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"wsuper: error: {tmp_path}/system.toml:2: system.socket: "
                               f"the external socket {deep}/calc.sock would have "), line
    # a directory for the socket that cannot be made: named with its key
    system = system.replace(f"{deep}/calc.sock", f"{tmp_path}/no/such/calc.sock")
    (tmp_path / "system.toml").write_text(system)
    r = run_wsuper("up", str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.output
    assert r.stderr.startswith(f"wsuper: error: {tmp_path}/system.toml:2: system.socket: cannot "
                               f"make socket directory {tmp_path}/no/such"), r.stderr
    env = {**os.environ, "XDG_RUNTIME_DIR": str(deep)}
    (tmp_path / "system.toml").write_text(GOOD)
    r = run_wsuper("up", str(tmp_path / "system.toml"), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "the admin socket" in r.stderr and "XDG_RUNTIME_DIR" in r.stderr, r.stderr


@pytest.mark.parametrize("what, make", [
    ("a regular file", lambda p: p.write_text("x")),       # a schema of the system, say
    ("a directory", lambda p: p.mkdir()),
    ("a symbolic link", lambda p: os.symlink("nowhere", p)),
])
def test_a_socket_path_where_something_else_lies_is_refused_by_check_as_by_up(
        tmp_path, what, make):
    """`check` passed `socket = "calc.capnp"` (any file, directory or link there),
    and `up` then refused it: "... exists and is not a socket", naming no key."""
    os.chmod(tmp_path, 0o700)
    make(tmp_path / "there")
    system = GOOD + 'external = true\n'
    system = system.replace("[system]\n", '[system]\nsocket = "there"\n')
    (tmp_path / "system.toml").write_text(system)
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, r.output
        (line,) = r.stderr.strip().splitlines()
        assert line == (f"wsuper: error: {tmp_path}/system.toml:2: system.socket: the socket "
                        f"{tmp_path}/there exists and is {what}, not a socket; remove it or "
                        f"choose another path"), line
    assert os.path.lexists(tmp_path / "there")


_BIND_SCRIPT = """
import json, subprocess, sys
cases = json.loads(sys.argv[1])
out = []
for mount, system in cases:
    subprocess.run(mount, check=True)
    with open(system[0], "w") as f:
        f.write(system[1])
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "check", system[0]],
                       capture_output=True, text=True, timeout=60)
    out.append([r.returncode, r.stderr])
print(json.dumps(out))
"""


def test_a_bind_mount_does_not_hide_what_a_grant_reaches(tmp_path):
    """Own paths and deciding files were compared with the grant by real path, and
    a bind mount shows one directory at two real paths: a writable grant of the
    second one passed `check`, and the compartment could read and change the
    audit, the log directory, or another compartment's module.  Paths are also
    compared by their place in their file system now (supervisor/mounts.py)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    for d in ("box/logs", "mods", "other", "v1", "v2", "v3", "v4", "low", "up", "work",
              "merged"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "mods" / "n.wat").write_text(MOD)
    (tmp_path / "box" / "audit.jsonl").write_text("")

    def system(n, head, grant):
        return [str(tmp_path / f"s{n}.toml"),
                f'[system]\n{head}\n[compartments.m]\nmodule = "m.wat"\n'
                f'[compartments.m.grants]\nd = {{ host = "directory", path = "{grant}" }}\n'
                f'[compartments.n]\nmodule = "mods/n.wat"\n']
    def bind(source, view):
        return ["mount", "--bind", str(tmp_path / source), str(tmp_path / view)]
    overlay = ["mount", "-t", "overlay", "overlay", "-o",
               f"lowerdir={tmp_path}/low,upperdir={tmp_path}/up,workdir={tmp_path}/work",
               str(tmp_path / "merged")]
    (tmp_path / "up" / "audit.jsonl").write_text("")     # seen in merged/ too
    cases = [  # (a mount, the system)
        (bind("box", "v1"), system(1, 'audit = "box/audit.jsonl"', tmp_path / "v1")),
        (bind("box/logs", "v2"), system(2, 'logs = "box"', tmp_path / "v2")),
        (bind("mods", "v3"), system(3, "", tmp_path / "v3")),
        # the audit, seen through an overlay, lies in its upper directory too
        (overlay, system(5, 'audit = "merged/audit.jsonl"', tmp_path / "up")),
        (["true"], system(6, 'audit = "up/audit.jsonl"', tmp_path / "merged")),
        (bind("other", "v4"), system(4, 'audit = "box/audit.jsonl"',
                                     tmp_path / "v4")),   # reaches nothing
    ]
    import json
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        "-c", _BIND_SCRIPT, json.dumps(cases, default=str)],
                       capture_output=True, text=True, timeout=240,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    if r.returncode != 0 and ("Operation not permitted" in r.stderr or "mount" in r.stderr):
        pytest.skip(f"cannot mount here: {r.stderr.strip()[-200:]}")
    results = json.loads(r.stdout)
    named = [f"reaches the supervisor's audit file {tmp_path}/box/audit.jsonl",
             f"reaches the supervisor's log directory {tmp_path}/box",
             f"would let compartment m change compartment n's module {tmp_path}/mods/n.wat",
             f"reaches the supervisor's audit file {tmp_path}/merged/audit.jsonl",
             f"reaches the supervisor's audit file {tmp_path}/up/audit.jsonl"]
    for (code, err), want in zip(results, named):
        assert code == 2 and "compartments.m.grants.d.path" in err and want in err, err
    assert results[-1][0] == 0, results[-1][1]


def test_an_audit_file_with_another_hard_link_is_refused(tmp_path):
    """A second name of the audit file, made on the host inside a directory a
    compartment is granted (even read-only), let it read every call's record, or
    forge records: only check's generic warning said so.  The supervisor owns the
    audit, so it must have one name: check and up refuse it otherwise."""
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "g").mkdir()
    (tmp_path / "audit.jsonl").write_text("")
    os.link(tmp_path / "audit.jsonl", tmp_path / "g" / "notes.txt")
    system = (f'[system]\naudit = "audit.jsonl"\n[compartments.m]\nmodule = "m.wat"\n'
              f'[compartments.m.grants]\n'
              f'd = {{ host = "directory", path = "{tmp_path}/g", read_only = true }}\n')
    (tmp_path / "system.toml").write_text(system)
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, r.output
        assert f":2: system.audit: the audit file {tmp_path}/audit.jsonl has 2 hard links" \
            in r.stderr, r.stderr
    os.unlink(tmp_path / "g" / "notes.txt")
    assert run_wsuper("check", str(tmp_path / "system.toml")).returncode == 0


def test_check_quotes_names_that_could_pass_for_the_text_around_them(tmp_path):
    """A directory's name is the host's, not the operator's: one named like the end
    of a line of check's output made that line lie about where a grant came from.
    Paths that are not plain are shown in double quotes, escaped."""
    (tmp_path / "m.wat").write_text(MOD)
    odd = tmp_path / 'd  (from /etc/trusted.toml: compartments.m.grants.x) "'
    odd.mkdir(parents=True)
    r = _check(tmp_path, f'[compartments.m]\nmodule = "m.wat"\n[compartments.m.grants]\n'
                         f'd = {{ host = "directory", path = """{odd}""", read_only = true }}\n')
    assert r.returncode == 0, r.output
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("  d -> ")]
    assert line == (f'  d -> host Directory [path="{tmp_path}/d  (from /etc/trusted.toml: '
                    f'compartments.m.grants.x) \\"", read_only]  '
                    f"(from {tmp_path}/system.toml: compartments.m.grants.d)"), line


def test_no_writable_grant_reaches_what_wsuper_runs_from(tmp_path):
    """A writable grant over wsuper's own packages, or the Python that runs it, let
    a compartment change the supervisor's code, which runs with every grant (and
    in every engine) at the next start; a read-only one is fine."""
    import sysconfig
    import supervisor
    (tmp_path / "m.wat").write_text(MOD)
    own = os.path.realpath(os.path.dirname(supervisor.__file__))
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    for path, named in ((own, f"wsuper's own code {own}"),
                        (os.path.dirname(own), f"wsuper's own code {own}"),   # holds it
                        (site, "the Python that runs wsuper ")):
        grant = f'd = {{ host = "directory", path = "{path}" }}'
        for extra, code in (("", 2), (", read_only = true", 0)):
            r = _check(tmp_path, f'[compartments.m]\nmodule = "m.wat"\n'
                                 f'[compartments.m.grants]\n{grant[:-2]}{extra} }}\n')
            assert r.returncode == code, (path, extra, r.output)
            if code:
                assert f"compartments.m.grants.d.path: {path} would let compartment m " \
                       f"change {named}" in r.stderr, r.stderr
                assert "what is there runs as the supervisor at the next start" in r.stderr


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "socket", "dangling"])
def test_check_refuses_every_audit_file_that_up_refuses(tmp_path, kind):
    """An outside review: docs/policy-reference.md says a symbolic link, a FIFO, a
    socket or a device at the audit's path stops `wsuper check` and `wsuper up`;
    check said every one of them was fine (exit 0), and only up refused."""
    import socket
    (tmp_path / "m.wat").write_text(MOD)
    audit = tmp_path / "audit.jsonl"
    if kind == "symlink":
        (tmp_path / "real.jsonl").write_text("")
        os.symlink(tmp_path / "real.jsonl", audit)
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere.jsonl", audit)
    elif kind == "fifo":
        os.mkfifo(audit)
    elif kind == "directory":
        audit.mkdir()
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(audit))
        s.close()
    (tmp_path / "system.toml").write_text(
        '[system]\naudit = "audit.jsonl"\n[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, (command, r.output)
        assert ": system.audit: " in r.stderr and str(audit) in r.stderr, r.stderr
        assert command == "up" or ":2: system.audit: " in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "nowhere.jsonl").exists()      # nothing made through a link


@pytest.mark.parametrize("case", ["socket dir open to others", "socket dir a link",
                                  "--socket dir open to others", "logs open to others",
                                  "logs a link", "audit dir cannot be made",
                                  "default logs open to others"])
def test_check_refuses_every_directory_that_up_refuses(tmp_path, monkeypatch, case):
    """The class of the test above: `wsuper check` validates everything up would, but
    it looked at the audit file only: a socket directory, a log directory or an
    audit directory that up refuses before anything starts (open to others, a
    symbolic link, one that cannot be made) passed check with exit 0.  (An audit
    directory that is a link is left to up, as test_a_writable_grant_cannot_reach_
    the_audit_through_a_link_it_could_replace asks.)  And up named
    `system.socket` for the directory of `--socket`, and `system.logs` for the
    default log directory: keys the file does not have."""
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(tmp_path / "real", tmp_path / "link")
    system, args, key = "", [], ""
    if case == "socket dir open to others":
        system, key = f'socket = "{tmp_path}/open/s.sock"\n', "system.socket"
    elif case == "socket dir a link":
        system, key = f'socket = "{tmp_path}/link/s.sock"\n', "system.socket"
    elif case == "--socket dir open to others":
        args, key = ["--socket", f"{tmp_path}/open/s.sock"], "--socket"
    elif case == "logs open to others":
        system, key = f'logs = "{tmp_path}/open"\n', "system.logs"
    elif case == "logs a link":
        system, key = f'logs = "{tmp_path}/link"\n', "system.logs"
    elif case == "default logs open to others":      # no key: the file has none
        from supervisor import endpoint
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
        logs = tmp_path / "state" / "wsuper" / endpoint.system_id(str(tmp_path / "system.toml"))
        logs.mkdir(parents=True)
        os.chmod(logs, 0o777)
    else:
        system, key = f'audit = "{tmp_path}/no/such/audit.jsonl"\n', "system.audit"
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n{system}'
        f'[compartments.m]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
        f'external = true\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"), *(args if command == "up" else []),
                       timeout=60)
        if command == "check" and args:         # check has no --socket: up only
            assert r.returncode == 0, r.output
            continue
        assert r.returncode == 2, (command, r.output)
        if key:
            assert f": {key}: " in r.stderr, (command, r.stderr)
        else:
            assert "log directory" in r.stderr and ": system." not in r.stderr, \
                (command, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "no").exists() and not os.listdir(tmp_path / "real")


@pytest.mark.parametrize("case", ["logs", "audit", "socket", "runtime", "default logs",
                                  "logs through another's link"])
def test_no_directory_up_writes_in_lies_beneath_one_another_user_may_change(
        tmp_path, monkeypatch, case):
    """Only the directory itself was checked (ours, closed to others), not those above
    it: beneath a directory another user may change (theirs, `logs =
    "/home/eve/shared/logs"`; or one writable by others without the sticky bit),
    they could move it away and put a link of theirs in its place, and `up`, as
    root, made its log, audit and socket directories where the link led and wrote
    its files there (seen: /home/eve/shared -> /opt/sysdir, and root's `up` made
    /opt/sysdir/logs and /opt/sysdir/audit, with its log files and audit; `check`
    said 0).  Both refuse, exit 2, naming the directory; nothing is made."""
    open_ = tmp_path / "open"
    open_.mkdir()
    os.chmod(open_, 0o777)                          # anyone may rename what is in it
    real = tmp_path / "real"
    real.mkdir(mode=0o700)                          # where another's link leads
    system, beneath = "", str(open_)
    if case == "logs":
        system = f'logs = "{open_}/logs"\n'
    elif case == "audit":
        system = f'audit = "{open_}/audit/a.jsonl"\n'
    elif case == "socket":
        system = f'socket = "{open_}/run/s.sock"\n'
    elif case == "runtime":
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(open_))
    elif case == "default logs":
        monkeypatch.setenv("XDG_STATE_HOME", str(open_ / "state"))
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to make another user's directory and link")
        theirs = tmp_path / "theirs"                # another user's home, 0755
        theirs.mkdir(mode=0o755)
        os.symlink(real, theirs / "shared")         # their link, to a directory of root's
        os.lchown(theirs / "shared", 65534, 65534)
        os.chown(theirs, 65534, 65534)
        system, beneath = f'logs = "{theirs}/shared/logs"\n', str(theirs)
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n{system}'
        f'[compartments.m]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
        f'external = true\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"), timeout=60)
        assert r.returncode == 2, (command, r.output)
        assert f" lies beneath {beneath}, in which another user may rename or replace " \
               f"what is there" in r.stderr, (command, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not os.listdir(open_) and not os.listdir(real), (command, os.listdir(open_))


@pytest.fixture
def unwritable(tmp_path):
    """A directory nothing can be made in: mode 0500 for a user, a read-only tmpfs
    for root (whom no mode stops)."""
    import subprocess
    d = tmp_path / "unwritable"
    d.mkdir()
    if os.getuid() != 0:
        os.chmod(d, 0o500)
        yield d
        os.chmod(d, 0o700)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "none", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


@pytest.mark.parametrize("case", ["logs", "audit", "socket"])
def test_check_refuses_a_directory_up_cannot_make(tmp_path, unwritable, case):
    """check said 0 of a log, audit or socket directory up must make where nothing
    can be made (a read-only file system, a directory not writable by the user):
    it looked only at whether its parent was a directory, and up then exited 2
    ("cannot make log directory ...: Read-only file system")."""
    key, line = {"logs": ("system.logs", f'logs = "{unwritable}/logs"\n'),
                 "audit": ("system.audit", f'audit = "{unwritable}/a/audit.jsonl"\n'),
                 "socket": ("system.socket", f'socket = "{unwritable}/s/x.sock"\n')}[case]
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n{line}'
        f'[compartments.m]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
        f'external = true\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"), timeout=60)
        assert r.returncode == 2, (command, r.output)
        assert f": {key}: cannot make " in r.stderr and str(unwritable) in r.stderr, \
            (command, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("case", ["granted", "too long", "empty"])
def test_up_socket_is_checked_as_the_system_files_socket_is(tmp_path, case):
    """An outside review: `wsuper up --socket PATH` went straight to the runtime,
    around what [system] socket is held to: a socket in a directory a compartment
    may change through its grant (it could remove or replace the supervisor's
    socket) was bound, a path too long for the kernel failed with only "AF_UNIX
    path too long", and an empty one was taken as none."""
    (tmp_path / "data").mkdir()
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{SCHEMA}"]
[compartments.calc]
module = "{CALC}"
exports = "Calc"
external = true
[compartments.calc.grants]
data = {{ host = "directory", path = "{tmp_path}/data" }}
""")
    socket = {"granted": f"{tmp_path}/data/x.sock", "too long": f"{tmp_path}/{'s' * 120}.sock",
              "empty": ""}[case]
    want = {"granted": f"compartments.calc.grants.data.path: {tmp_path}/data reaches the "
                       f"supervisor's external socket {socket}",
            "too long": f": --socket: the external socket {socket} would have",
            "empty": ": --socket: must be a non-empty path"}[case]
    r = run_wsuper("up", str(tmp_path / "system.toml"), "--socket", socket, timeout=30)
    assert r.returncode == 2 and r.stdout == "", r.output
    assert len(r.stderr.strip().splitlines()) == 1 and want in r.stderr, r.stderr
    assert not os.path.exists(f"{tmp_path}/data/x.sock")


WASI_MOD = ('(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))) '
            '(memory (export "memory") 1) (func (export "_start")))')


@pytest.mark.parametrize("grant, line, reason", [
    ('calc = { compartment = "calc", allow = ["nosuch"] }', "grants.calc.allow",
     "Calc has no method 'nosuch'"),
    ('calc = { compartment = "calc", allow = ["Nope.add"] }', "grants.calc.allow",
     "unknown interface 'Nope'"),
    ('stdout = { host = "clock" }', "grants.stdout",
     "a WASI program's stdout must be a log or file grant, not clock"),
    ('env = { host = "environment", vars = { BIG = "' + "x" * 70_000 + '" } }',
     "grants.env.vars", "its vars take 70,0"),
])
def test_what_preflight_finds_wrong_in_a_policy_files_grant_is_reported_in_that_file(
        tmp_path, grant, line, reason):
    """An outside review: what preflight checks in a grant (its allow list, what a WASI
    program takes from it) was reported at the system file's [compartments.NAME]
    line under compartments.NAME.grants.G, a key that file does not have, when the
    grant came from a policy file; docs/policy-reference.md: errors name the policy
    file, its line and key."""
    (tmp_path / "m.wat").write_text(WASI_MOD)
    (tmp_path / "p.toml").write_text(f"[grants]\n{grant}\n")
    (tmp_path / "system.toml").write_text(f"""[system]
schemas = ["{SCHEMA}"]
[compartments.calc]
module = "{CALC}"
exports = "Calc"
[compartments.m]
module = "m.wat"
policy = "p.toml"
[compartments.m.limits]
message_size = "64KiB"
""")
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.output
    assert r.stderr.startswith(f"wsuper: error: {tmp_path}/p.toml:2: {line}: {reason}"), r.stderr


def test_an_environment_larger_than_its_holder_can_read_is_refused_naming_the_grant(tmp_path):
    """An outside review: an environment grant whose variables (or arguments) come to
    more than its holder's message_size was refused at every Environment call, and
    a WASI program, which reads them before main, ended with exit code 71 and not a
    word of why.  check and up refuse it, naming the grant and both sizes."""
    (tmp_path / "m.wat").write_text(WASI_MOD)
    for key, value in (("vars", '{ A = "' + "x" * 5000 + '" }'),
                       ("args", "[" + ", ".join(['"' + "y" * 100 + '"'] * 50) + "]")):
        (tmp_path / "system.toml").write_text(
            f'[compartments.m]\nmodule = "m.wat"\n[compartments.m.limits]\n'
            f'message_size = "4KiB"\n[compartments.m.grants]\n'
            f'env = {{ host = "environment", {key} = {value} }}\n')
        for command in ("check", "up"):
            r = run_wsuper(command, str(tmp_path / "system.toml"))
            assert r.returncode == 2 and r.stdout == "", r.output
            assert f":6: compartments.m.grants.env.{key}: its {key} take " in r.stderr
            assert "more than compartment m accepts (limits.message_size = 4,096)" in r.stderr
        ok = value.replace("x" * 5000, "x" * 100).replace(", ".join(['"' + "y" * 100 + '"'] * 50),
                                                          '"y"')
        (tmp_path / "system.toml").write_text(
            (tmp_path / "system.toml").read_text().replace(value, ok))
        assert run_wsuper("check", str(tmp_path / "system.toml")).returncode == 0


@pytest.mark.parametrize("audit", ["logs/m.log", "logs/supervisor.log", "logs/m.log.2",
                                   "DEFAULT/supervisor.log"])
def test_the_audit_cannot_be_one_of_the_log_files(tmp_path, audit):
    """An outside review: [system] audit could name a log file (supervisor.log or a
    compartment's NAME.log): audit records and log lines went into one file, and
    the log's rotation at 1 MiB, which a compartment's own lines bring about, moved
    the audit from under its writer and later deleted it."""
    from supervisor import endpoint
    (tmp_path / "m.wat").write_text(MOD)
    system = tmp_path / "system.toml"
    if audit.startswith("DEFAULT/"):
        state = tmp_path / "state"
        env = {**os.environ, "XDG_STATE_HOME": str(state)}
        logs = ""
        audit = audit.replace("DEFAULT", os.path.join(
            str(state), "wsuper", endpoint.system_id(str(system))))
    else:
        env, logs = None, 'logs = "logs"\n'
    system.write_text(f'[system]\n{logs}audit = "{audit}"\n[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(system), env=env)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        line = 2 if env is not None else 3
        assert f":{line}: system.audit: the audit file" in r.stderr and "log file in the log " \
            "directory" in r.stderr, r.stderr
    system.write_text(system.read_text().replace(os.path.basename(audit), "audit.jsonl"))
    assert run_wsuper("check", str(system)).returncode == 0 or env is not None


@pytest.mark.parametrize("audit", [".x.jsonl.rotating", ".wsuper-audit-0123456789abcdef.rotating",
                                   ".audit.jsonl.rotating"])
def test_the_audit_cannot_have_the_name_of_another_audits_next_file(tmp_path, audit):
    """An outside review: a rotation makes the next audit file under a hidden name
    beside the audit (.AUDIT.rotating) and removes any file found there first, as a
    leftover of a rotation cut short.  Two systems given `aud/x.jsonl` and
    `aud/.x.jsonl.rotating` ran side by side; the first's rotation unlinked the
    second's audit, which went on writing every record into a file no name reached.
    Such a name is refused as the audit, and no grant may reach it either."""
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "aud").mkdir(mode=0o700)
    system = tmp_path / "system.toml"
    system.write_text(f'[system]\naudit = "aud/{audit}"\n[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(system))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert ":2: system.audit: the audit file" in r.stderr and "the supervisor keeps for " \
            "the next audit file" in r.stderr, r.stderr
    assert not (tmp_path / "aud" / audit).exists()
    # a file grant of the next audit file's name of the system's own audit
    (tmp_path / "aud" / ".audit.jsonl.rotating").write_text("")
    system.write_text('[system]\naudit = "aud/audit.jsonl"\n[compartments.m]\nmodule = "m.wat"\n'
                      f'[compartments.m.grants]\nd = {{ host = "file", path = '
                      f'"{tmp_path}/aud/.audit.jsonl.rotating" }}\n')
    r = run_wsuper("check", str(system))
    assert r.returncode == 2 and "reaches the supervisor's rotated audit file" in r.stderr, \
        r.stderr
    system.write_text(system.read_text().replace(".audit.jsonl.rotating", "audit.jsonl.rot"))
    (tmp_path / "aud" / "audit.jsonl.rot").write_text("")
    assert run_wsuper("check", str(system)).returncode == 0


@pytest.mark.parametrize("audit", ["x.jsonl.1", "x.jsonl.8", "audit.100"])
def test_the_audit_cannot_have_the_name_of_another_audits_rotated_file(tmp_path, audit):
    """An outside review: two systems given `aud/x.jsonl` and `aud/x.jsonl.1` ran
    side by side; the first's rotation renamed the second's audit on (x.jsonl.1 ->
    x.jsonl.2 ...) while the second wrote into it, and deleted it past audit_keep;
    started after a rotation, the second appended its records to the first's
    rotated file.  The rotated name of any audit (NAME.1 .. NAME.100) is refused as
    the audit, as .NAME.rotating is; other names that end in a number are not."""
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "aud").mkdir(mode=0o700)
    system = tmp_path / "system.toml"
    system.write_text(f'[system]\naudit = "aud/{audit}"\n[compartments.m]\nmodule = "m.wat"\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(system))
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert ":2: system.audit: the audit file" in r.stderr and "the name of a rotated " \
            "file of the audit" in r.stderr, r.stderr
    assert not (tmp_path / "aud" / audit).exists()
    for fine in ("x.jsonl.0", "x.jsonl.101", "x.2026-12", "x.v1"):
        system.write_text(system.read_text().replace(audit, fine))
        assert run_wsuper("check", str(system)).returncode == 0, fine
        audit = fine


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "too large"])
def test_preflight_reads_a_module_as_every_start_does_never_waiting_on_it(tmp_path, kind):
    """wasm.read_file is the one reader of module bytes (a regular file of at most
    MAX_MODULE_BYTES, opened without blocking), but preflight (`check`, `up`) read
    the module with open().read(): a module replaced after policy.load looked at it
    (a compartment may change its own module in its writable grant) by a FIFO held
    `check` and `up` in open() for good; a file grown past the bound was read whole."""
    import threading
    from compartments.wasm import MAX_MODULE_BYTES
    from supervisor import policy, preflight
    path = tmp_path / "m.wat"
    path.write_text("(module)")
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    system = policy.load(str(tmp_path / "system.toml"))
    path.unlink()                      # now, after load looked at it
    done = threading.Event()
    if kind == "fifo":
        os.mkfifo(path)

        def writer():       # were it opened to wait for a writer, it is let go
            while not done.wait(0.2):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except OSError:
                    continue
        threading.Thread(target=writer, daemon=True).start()
    elif kind == "device":
        os.symlink("/dev/null", path)     # /dev/zero: read until memory ran out
    elif kind == "directory":
        path.mkdir()
    else:
        with open(path, "wb") as f:          # sparse: no disk used
            f.truncate(MAX_MODULE_BYTES + 1)
    try:
        with pytest.raises(policy.PolicyError) as e:
            preflight.prepare(system)
    finally:
        done.set()
    want = {"fifo": "is a FIFO, not a regular file", "device": "is a device, not a regular file",
            "directory": "is a directory, not a regular file",
            "too large": f"has {MAX_MODULE_BYTES + 1:,} bytes, more than {MAX_MODULE_BYTES:,}"}
    assert e.value.key == "compartments.m.module" and want[kind] in str(e.value), str(e.value)


@pytest.mark.parametrize("grant", ["its log directory", "read-only", "a file in it",
                                   "every system's", "their parent"])
def test_no_grant_reaches_another_systems_log_directory(tmp_path, monkeypatch, grant):
    """Every system's log directory lies in $XDG_STATE_HOME/wsuper by default, as
    every system's sockets lie in the runtime directory; only the system's own
    was out of its grants: a compartment could be granted another system's log
    directory (or, in a system whose own logs are elsewhere, the directory
    holding them all) and forge the lines `wsuper logs` shows of it, read them,
    or stop its logs (a second hard link to a log file).  That directory is the
    supervisor's too (endpoint.own_paths)."""
    from supervisor import endpoint, policy
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    other = tmp_path / "other.toml"
    others = state / "wsuper" / endpoint.system_id(str(other))
    others.mkdir(parents=True, mode=0o700)
    (others / "supervisor.log").write_text("")
    (tmp_path / "m.wat").write_text(MOD)
    (tmp_path / "data").mkdir()
    path, extra, logs = {
        "its log directory": (others, "", ""),
        "read-only": (others, ", read_only = true", ""),
        "a file in it": (others / "supervisor.log", "", ""),
        "every system's": (state / "wsuper", "", 'logs = "mine"\n'),
        "their parent": (state, "", 'logs = "mine"\n')}[grant]
    kind = "file" if grant == "a file in it" else "directory"
    system = tmp_path / "system.toml"

    def text(where, more=""):
        return (f'[system]\n{logs}[compartments.m]\nmodule = "m.wat"\n[compartments.m.grants]\n'
                f'd = {{ host = "{kind}", path = "{where}"{more} }}\n')
    system.write_text(text(path, extra))
    with pytest.raises(policy.PolicyError) as e:
        policy.load(str(system))
    assert "compartments.m.grants.d.path" in str(e.value)
    assert f"reaches the supervisor's log directories of every system (their default " \
           f"place) {state}/wsuper" in str(e.value), str(e.value)
    if kind == "directory":              # and a directory elsewhere is granted as before
        system.write_text(text(tmp_path / "data"))
        policy.load(str(system))


@pytest.mark.parametrize("there", [False, True], ids=["to be made", "there already"])
def test_check_refuses_an_audit_file_up_cannot_write(tmp_path, there):
    """A review of start-up in hostile environments: an audit file in a directory up
    cannot write (a read-only file system; for a user, a directory of theirs without
    write permission), or one already there that cannot be opened for writing,
    passed `wsuper check` (exit 0) and `up` refused it (2), with "the audit must be
    a regular file" after a read-only file system, which is no matter of the file's
    kind.  Check refuses what up refuses, and each says only what is wrong."""
    import subprocess
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o700)
    audit = folder / "audit.jsonl"
    if there:
        audit.write_text("")
        audit.chmod(0o600)
    mounted = False
    if os.geteuid() == 0:            # root writes whatever its modes say: a read-only mount
        r = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                           capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount read-only here: {r.stderr.decode()[:200]}")
        mounted = True
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        why = "Read-only file system"
    else:
        (audit if there else folder).chmod(0o400 if there else 0o500)
        why = "Permission denied"
    try:
        (tmp_path / "m.wat").write_text(MOD)
        (tmp_path / "system.toml").write_text(
            '[system]\naudit = "ro/audit.jsonl"\n[compartments.m]\nmodule = "m.wat"\n')
        for command in ("check", "up"):
            r = run_wsuper(command, str(tmp_path / "system.toml"))
            assert r.returncode == 2, (command, r.output)
            assert ": system.audit: " in r.stderr and str(audit) in r.stderr, r.stderr
            assert why in r.stderr and "regular file" not in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o700)


@pytest.mark.parametrize("name", ["ADMIN", "other-0123abcd.lock", "other-0123abcd.admin.sock",
                                  "other-0123abcd.sock"])
def test_the_external_socket_cannot_take_a_systems_own_name_in_the_runtime_directory(
        tmp_path, name):
    """An outside review: [system] socket (or --socket) could name a system's own
    file in the runtime directory: its lock (another system's `up` then found a
    socket where its lock file goes and could not start; a lock file there was
    refused with "remove it", the lock of a system that ran), its admin socket
    (this system's own: "in use by a running system", its own), or its default
    external socket.  Such a name is refused by check and up, exit 2."""
    from supervisor import endpoint
    run = tmp_path / "run"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    system = tmp_path / "system.toml"
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(run)
    try:
        admin = endpoint.admin_socket_path(str(system))
    finally:
        if old is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
    path = admin if name == "ADMIN" else str(run / "wsuper" / name)
    text = (f'[system]\nschemas = ["{SCHEMA}"]\nsocket = "{{}}"\n[compartments.m]\n'
            f'module = "{CALC}"\nexports = "Calc"\nexternal = true\n')
    system.write_text(text.format(path))
    for command in ("check", "up"):
        r = run_wsuper(command, str(system), env=env)
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert ":3: system.socket: the external socket" in r.stderr and "has the name of a " \
            "system's own socket" in r.stderr, r.stderr
    assert not os.path.lexists(path)
    system.write_text(text.format(run / "wsuper" / "calc.sock"))
    assert run_wsuper("check", str(system), env=env).returncode == 0


@pytest.mark.parametrize("link", ["symbolic", "hard"])
@pytest.mark.parametrize("command", ["check", "up"])
def test_a_schema_listed_again_through_a_link_is_named_as_listed_twice(tmp_path, link,
                                                                        command):
    """docs/policy-reference.md: a schema listed again, however it is spelled, is
    refused naming where it was listed first.  Spelled through a symbolic or a
    hard link (calc.capnp, then again.capnp -> calc.capnp) it passed that check,
    which compares paths, and the file loaded twice stopped `check` and `up` at
    "again.capnp:1: Duplicate ID @0xf0e7afc40966bc30.", which does not say the
    list names one file twice."""
    shutil.copy(SCHEMA, tmp_path / "calc.capnp")
    if link == "symbolic":
        os.symlink("calc.capnp", tmp_path / "again.capnp")
    else:
        os.link(tmp_path / "calc.capnp", tmp_path / "again.capnp")
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["calc.capnp", "again.capnp"]\n'
        f'[compartments.calc]\nmodule = "{CALC}"\nexports = "Calc"\n')
    r = run_wsuper(command, str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line == (f"wsuper: error: {tmp_path / 'system.toml'}:2: system.schemas[1]: "
                    f"{tmp_path / 'again.capnp'} is listed already, at system.schemas[0] "
                    f"({tmp_path / 'calc.capnp'}, the same file through a symbolic or hard "
                    "link)"), line


@pytest.mark.parametrize("case", ["listed_after_import", "imported_after_listed",
                                  "imported_twice"])
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_schema_file_read_under_two_names_is_named_as_one_file(tmp_path, case, link):
    """pycapnp knows a schema file by its name: one file under two names (a link),
    one listed and one imported, or imported twice by one schema, was two files
    declaring the same ids, and `check` and `up` stopped at "l2.capnp:1:
    Duplicate ID @0x...", not saying that both names are one file."""
    (tmp_path / "lib.capnp").write_text("@0xd1c3f0a2b4e5f631;\n"
                                        "interface Counter { inc @0 () -> (); }\n")
    if link == "symbolic":
        os.symlink("lib.capnp", tmp_path / "l2.capnp")
    else:
        os.link(tmp_path / "lib.capnp", tmp_path / "l2.capnp")
    second = 'using M = import "l2.capnp";\n' if case == "imported_twice" else ""
    (tmp_path / "c.capnp").write_text(
        '@0xd1c3f0a2b4e5f632;\nusing L = import "lib.capnp";\n' + second
        + "interface Calc { add @0 () -> (c :L.Counter); }\n")
    schemas = {"listed_after_import": '"c.capnp", "l2.capnp"',
               "imported_after_listed": '"l2.capnp", "c.capnp"',
               "imported_twice": '"c.capnp"'}[case]
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = [{schemas}]\n'
        f'[compartments.calc]\nmodule = "{CALC}"\nexports = "Calc"\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    lib, l2, c = (str(tmp_path / n) for n in ("lib.capnp", "l2.capnp", "c.capnp"))
    system = tmp_path / "system.toml"
    # a listed schema refused for no line of its own is said at the line that lists it
    expected = {"listed_after_import": f"{system}:2: system.schemas[1]: {l2}: is {lib} ",
                "imported_after_listed": f"{c}:2: imports {lib}, which is {l2} ",
                "imported_twice": f"{c}:3: imports {l2}, which is {lib} "}[case]
    assert line.startswith(f"wsuper: error: {expected}(the same file through a symbolic or "
                           "hard link), read already under that name"), line
    assert "Duplicate ID" not in line


@pytest.mark.parametrize("command", ["check", "up"])
def test_a_schema_importing_a_copy_of_wsupers_own_probe_schema_is_named_as_a_copy(tmp_path,
                                                                                   command):
    """docs/instrumentation.md: an analysis's project may hold a copy of probe.capnp,
    and a copy *listed* is that schema.  A schema of the project that imports the
    copy (`import "probe.capnp"`, for its Probe or ProbeEvent) had it parsed as a
    file of its own after wsuper's, and `check` and `up` stopped at
    "probe.capnp:1: Duplicate ID @0xc6a1d2b3e4f50617.", not saying that it is a
    copy of wsuper's own nor how to reach that one.  Refused at the import, naming
    both and the name that reaches wsuper's own (which then checks)."""
    import capnp_schemas
    original = os.path.join(os.path.dirname(capnp_schemas.__file__), "probe.capnp")
    shutil.copy(original, tmp_path / "probe.capnp")
    shutil.copy(SCHEMA, tmp_path / "calc.capnp")
    (tmp_path / "user.capnp").write_text(
        '@0xd1c3f0a2b4e5f701;\nusing P = import "probe.capnp";\n'
        "interface Analysis { run @0 (p :P.Probe) -> (); }\n")
    (tmp_path / "system.toml").write_text(
        '[system]\nschemas = ["calc.capnp", "user.capnp"]\n'
        f'[compartments.calc]\nmodule = "{CALC}"\nexports = "Calc"\n')
    r = run_wsuper(command, str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {tmp_path / 'user.capnp'}:2: imports "
                           f"{tmp_path / 'probe.capnp'}, a copy of wsuper's own probe.capnp "
                           f"({original}), read already"), line
    assert 'import wsuper\'s own as "/' in line and "Duplicate ID" not in line, line
    if command == "check":
        os.remove(tmp_path / "probe.capnp")
        name = re.search(r'import wsuper\'s own as "([^"]+)"', line).group(1)
        (tmp_path / "user.capnp").write_text(
            f'@0xd1c3f0a2b4e5f701;\nusing P = import "{name}";\n'
            "interface Analysis { run @0 (p :P.Probe) -> (); }\n")
        r = run_wsuper("check", str(tmp_path / "system.toml"))
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("change", ["rewritten", "removed", "renamed", "kept"])
def test_a_schema_file_changed_after_it_was_read_cannot_abort_a_later_load(tmp_path, change):
    """A process that loads schemas over a while (bindgen and build of several, the
    tests) had one parser, which keeps every file it read as it was then, and a
    child that checked each new schema against those files as they are *now*.
    a.capnp imports b.capnp, whose T has an id (written, @0x...9aa, or derived
    from b's and T's name); b.capnp is then rewritten, removed, or T renamed, and
    c.capnp declares T's id: the child saw no second declaration, and this
    process's parser aborted on "Duplicate ID" (SIGABRT, exit 134, a C++
    traceback; r125 closed the written ids, a derived one still aborted).  Each
    schema now has a parser of its own, reading private copies of the bytes that
    were checked: c.capnp loads, as does d.capnp; only while b.capnp still
    declares that id is c.capnp refused, naming b.capnp (an id is one
    declaration)."""
    (tmp_path / "a.capnp").write_text('@0xd1c3f0a2b4e5f901;\nusing B = import "b.capnp";\n'
                                      "struct A { b @0 :B.T; }\n")
    written = "@0xd1c3f0a2b4e5f9aa" if change != "renamed" else ""
    (tmp_path / "b.capnp").write_text(f"@0xd1c3f0a2b4e5f902;\n"
                                      f"struct T {written} {{ x @0 :UInt8; }}\n")
    (tmp_path / "d.capnp").write_text("@0xd1c3f0a2b4e5f904;\nstruct D { y @0 :UInt8; }\n")
    script = f"""if True:
        import os, capnp, capnp_schemas
        d = {str(tmp_path)!r}
        t = capnp_schemas.load(os.path.join(d, "a.capnp")).A.schema.fields["b"].schema.node.id
        with open(os.path.join(d, "c.capnp"), "w") as f:
            f.write("@0xd1c3f0a2b4e5f903;\\nstruct C @0x%x {{ y @0 :UInt8; }}\\n" % t)
        if {change!r} == "removed":
            os.remove(os.path.join(d, "b.capnp"))
        elif {change!r} in ("rewritten", "renamed"):
            with open(os.path.join(d, "b.capnp"), "w") as f:
                f.write("@0xd1c3f0a2b4e5f902;\\nstruct U @0xd1c3f0a2b4e5f9bb {{ x @0 :UInt8; }}\\n")
        for name in ("c", "d"):
            try:
                capnp_schemas.load(os.path.join(d, name + ".capnp"))
            except capnp_schemas.SchemaError as e:
                print("refused:", e)
            else:
                print(name, "loaded")
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, cwd=root)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    b, c = tmp_path / "b.capnp", tmp_path / "c.capnp"
    if change == "kept":
        assert r.stdout.splitlines()[0] == (
            f"refused: {c}:2: Duplicate ID @0xd1c3f0a2b4e5f9aa. {b} declares that id "
            "already: an id is one declaration, and a copy of a schema keeps its ids (give "
            "it new ones: `capnp id` makes one)"), r.stdout
    else:
        assert r.stdout.splitlines()[0] == "c loaded", r.stdout
    assert r.stdout.splitlines()[1] == "d loaded", r.stdout


def test_a_schema_changed_between_two_loads_in_one_process_is_loaded_as_it_is_now(tmp_path):
    """The one parser of a process kept a file as it first read it: a schema edited
    (a method added) and loaded again by the same process gave the old interface,
    and the new method was "not in the schema".  The new bytes are parsed anew."""
    path = tmp_path / "s.capnp"
    path.write_text("@0xd1c3f0a2b4e5fa01;\ninterface S { a @0 () -> (); }\n")
    script = f"""if True:
        import capnp_schemas
        print(sorted(capnp_schemas.load({str(path)!r}).S.schema.method_names))
        with open({str(path)!r}, "w") as f:
            f.write("@0xd1c3f0a2b4e5fa01;\\ninterface S {{ a @0 () -> (); b @1 () -> (); }}\\n")
        print(sorted(capnp_schemas.load({str(path)!r}).S.schema.method_names))
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, cwd=root)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.splitlines() == ["['a']", "['a', 'b']"], r.stdout


def test_the_bytes_a_schema_was_checked_with_are_the_bytes_parsed(tmp_path, monkeypatch):
    """A schema file rewritten after the child checked it and before this process
    parsed it (here: while the check runs) was read again by this process's
    parser: a file that declares one id twice would abort the process.  The
    parser reads the private copy that was checked: the schema loads as checked."""
    import capnp_schemas
    path = tmp_path / "r.capnp"
    path.write_text("@0xd1c3f0a2b4e5fb01;\ninterface R { a @0 () -> (); }\n")
    checked = capnp_schemas._parse_in_child

    def check_then_rewrite(*args, **kwargs):
        answer = checked(*args, **kwargs)
        path.write_text("@0xd1c3f0a2b4e5fb01;\ninterface R @0xd1c3f0a2b4e5fb01 {}\n")
        return answer
    monkeypatch.setattr(capnp_schemas, "parse_elsewhere", None)
    monkeypatch.setattr(capnp_schemas, "_parse_in_child", check_then_rewrite)
    module = capnp_schemas.load(str(path))
    assert list(module.R.schema.method_names) == ["a"]


def test_the_private_directory_of_the_schema_copies_gone_or_unusable_is_no_traceback(
        tmp_path, monkeypatch):
    """load() copies each schema into a private directory it makes once per process
    (_mirror).  Removed meanwhile (a cleaner of /tmp, in a process that loads
    schemas over a while), or never makeable (TMPDIR unusable), the next load
    failed with FileNotFoundError and a traceback, out of every caller's
    `except SchemaError`.  A directory that is gone, or is no longer a
    directory only this user may enter, is made anew; one that cannot be made
    is a SchemaError naming the schema.  A copy that failed its check is
    removed at once, not kept until the process ends."""
    import shutil
    import tempfile
    import capnp_schemas
    monkeypatch.setattr(capnp_schemas, "parse_elsewhere", None)
    path = tmp_path / "m.capnp"
    path.write_text("@0xd1c3f0a2b4e5fb11;\ninterface M { a @0 () -> (); }\n")
    capnp_schemas.load(str(path))
    first = capnp_schemas._mirror()
    shutil.rmtree(first)
    path.write_text("@0xd1c3f0a2b4e5fb11;\ninterface M { a @0 () -> (); b @1 () -> (); }\n")
    assert list(capnp_schemas.load(str(path)).M.schema.method_names) == ["a", "b"]
    os.chmod(capnp_schemas._mirror(), 0o777)
    path.write_text("@0xd1c3f0a2b4e5fb11;\ninterface M { c @0 () -> (); }\n")
    assert list(capnp_schemas.load(str(path)).M.schema.method_names) == ["c"]
    mirror = capnp_schemas._mirror()
    assert os.stat(mirror).st_mode & 0o777 == 0o700
    before = set(os.listdir(mirror))
    path.write_text("@0xd1c3f0a2b4e5fb11;\ninterface M { d @0 () -> () }\n")
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(path))
    assert e.value.path == str(path) and e.value.line == 2
    assert set(os.listdir(mirror)) == before
    monkeypatch.setattr(capnp_schemas, "_MIRROR", [])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    path.write_text("@0xd1c3f0a2b4e5fb11;\ninterface M { e @0 () -> (); }\n")
    with pytest.raises(capnp_schemas.SchemaError) as e:
        capnp_schemas.load(str(path))
    assert e.value.path == str(path) and "cannot copy it to check it" in e.value.reason


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o755])
def test_the_schema_copies_are_not_made_where_another_user_may_replace_them(
        tmp_path, monkeypatch, mode):
    """The private directory of the copies (0700) was made in TMPDIR whatever that
    is: in a directory others may write to without the sticky bit, another user
    may rename it (or the copy's directory in it) and put a tree of their own in
    its place, between the child's check and this process's parse of "the same"
    bytes (which the parser then aborts on).  Such a TMPDIR is refused, naming
    it; a sticky one (/tmp) or one only we may change is used."""
    import tempfile
    import capnp_schemas
    monkeypatch.setattr(capnp_schemas, "parse_elsewhere", None)
    monkeypatch.setattr(capnp_schemas, "_MIRROR", [])
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    os.chmod(tmp, mode)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    path = tmp_path / "t.capnp"
    path.write_text(f"@0x{0xd1c3f0a2b4e50000 + mode:016x};\ninterface T {{ a @0 () -> (); }}\n")
    if mode & 0o022 and not mode & 0o1000:
        with pytest.raises(capnp_schemas.SchemaError) as e:
            capnp_schemas.load(str(path))
        assert e.value.path == str(path) and f"{tmp} (above the private directory" \
            in e.value.reason, e.value.reason
        assert os.listdir(tmp) == []
    else:
        assert list(capnp_schemas.load(str(path)).T.schema.method_names) == ["a"]
        assert os.path.dirname(capnp_schemas._mirror()) == str(tmp)


@pytest.mark.parametrize("used", [True, False])
@pytest.mark.parametrize("command", ["check", "up"])
def test_an_id_derived_in_an_imported_file_is_one_declaration_across_schemas(
        tmp_path, command, used):
    """Each schema has a parser of its own (168c62c), which compiles of a file it
    imports only what the schema uses, and load() claimed only the ids written
    in such a file: b.capnp (imported by a.capnp) declaring `interface Admin`
    (its id derived from b's and the name), and c.capnp, listed after a.capnp,
    declaring `interface Calc2 @<Admin's id>`, were both accepted, two
    interfaces of one id in one system (the one parser before refused it:
    "Duplicate ID").  A file a schema imports is loaded whole, after it, in its
    parser (and the child's first): every id it declares is its, used or not."""
    (tmp_path / "a.capnp").write_text('@0xd1c3f0a2b4e5fd01;\nusing B = import "b.capnp";\n'
                                      "interface A { get @0 () -> (b :B.Admin); }\n")
    (tmp_path / "b.capnp").write_text("@0xd1c3f0a2b4e5fd02;\ninterface Admin { wipe @0 () -> (); }\n"
                                      "interface Unused { x @0 () -> (); }\n")
    import capnp
    b = capnp.SchemaParser().load(str(tmp_path / "b.capnp"))
    taken = (b.Admin if used else b.Unused).schema.node.id
    (tmp_path / "c.capnp").write_text(f"@0xd1c3f0a2b4e5fd03;\ninterface Calc2 @0x{taken:016x} "
                                      "{ add @0 () -> (); }\n")
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{SCHEMA}", "a.capnp", "c.capnp"]\n'
        f'socket = "{tmp_path / "s.sock"}"\n'
        f'[compartments.m]\nmodule = "{CALC}"\nexports = "Calc"\n')
    r = run_wsuper(command, str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    (out,) = r.stderr.strip().splitlines()
    assert out.startswith(f"wsuper: error: {tmp_path / 'c.capnp'}:2: Duplicate ID "
                          f"@0x{taken:016x}. {tmp_path / 'b.capnp'} declares that id already"), out


@pytest.mark.parametrize("name", ["b.schema", "sub/b", "b.capnp.txt"])
def test_a_schema_importing_a_file_of_any_name_loads_in_check_up_and_here(tmp_path, name,
                                                                          wsuper):
    """A file a schema imports may have any name (the parser reads any; only the
    schema's own must end in .capnp), and is loaded whole after the schema: that
    load went through pycapnp's load(), which refuses a name not ending in .capnp,
    so `import "b.schema"` of a good file was refused by check and up alike with
    "a.capnp: ValueError: File does not end with .capnp, .../b.schema" (2a207a8).
    Here: in this process, in check's parse (a fork), in up's (the zygote's)."""
    import capnp_schemas
    k = len(name)                       # ids of their own: this process loads each
    (tmp_path / "sub").mkdir()
    (tmp_path / name).write_text(f"@0xd1c3f0a2b4e5f{k:02x}2;\n"
                                 "interface Counter { inc @0 () -> (n :UInt32); }\n"
                                 "struct Unused { x @0 :UInt8; }\n")
    (tmp_path / "a.capnp").write_text(f'@0xd1c3f0a2b4e5f{k:02x}1;\nusing B = import "{name}";\n'
                                      "interface A { get @0 () -> (c :B.Counter); }\n")
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{SCHEMA}", "a.capnp"]\nsocket = "{tmp_path / "s.sock"}"\n'
        f'[compartments.calc]\nmodule = "{CALC}"\nexports = "Calc"\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.output
    running = wsuper("up", str(tmp_path / "system.toml"))
    assert running.next_start("calc").startswith("wsuper: ready calc"), running.lines
    capnp_schemas.load(str(tmp_path / "a.capnp"))
    (b,) = capnp_schemas.imported(str(tmp_path / "a.capnp")).values()
    assert sorted(capnp_schemas.interfaces(b)) == ["Counter"]
    assert [n.name for n in b.schema.node.nestedNodes] == ["Counter", "Unused"]


@pytest.mark.parametrize("case", ["probe_copy_changed", "engine_nested_id", "user_copy"])
@pytest.mark.parametrize("command", ["check", "up"])
def test_a_duplicate_id_names_the_file_that_declared_it_first(tmp_path, case, command):
    """pycapnp's "Duplicate ID @0x..." names only the second declaration: a copy of
    wsuper's own probe.capnp differing by one byte (a comment added) was
    "x.capnp:1: Duplicate ID @0xc6a1d2b3e4f50617.", and an id written that one of
    wsuper's schemas derives for a nested declaration (engine.capnp's Grant) was
    as mute about where the first is; so was a copy of a schema listed before.
    The first declaration is named too, and whether it is wsuper's own."""
    import capnp_schemas
    here = os.path.dirname(capnp_schemas.__file__)
    grant = next(n.id for n in capnp_schemas.engine.schema.node.nestedNodes)
    text, line, first = {
        "probe_copy_changed": (open(os.path.join(here, "probe.capnp")).read() + "# mine\n",
                               1, os.path.join(here, "probe.capnp")),
        "engine_nested_id": (f"@0xd1c3f0a2b4e5fc01;\nstruct Z @0x{grant:016x} "
                             "{ a @0 :UInt8; }\n", 2, os.path.join(here, "engine.capnp")),
        "user_copy": (open(SCHEMA).read(), 1, SCHEMA)}[case]
    (tmp_path / "x.capnp").write_text(text)
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{SCHEMA}", "x.capnp"]\n'
        f'[compartments.m]\nmodule = "{CALC}"\nexports = "Calc"\n')
    r = run_wsuper(command, str(tmp_path / "system.toml"))
    assert r.returncode == 2, r.stdout + r.stderr
    (out,) = r.stderr.strip().splitlines()
    own = " (one of wsuper's own schemas)" if case != "user_copy" else ""
    assert re.match(rf"wsuper: error: {re.escape(str(tmp_path / 'x.capnp'))}:{line}: "
                    rf"Duplicate ID @0x[0-9a-f]+\. {re.escape(first)}{re.escape(own)} "
                    "declares that id already", out), out
    assert "terminate called" not in r.stderr


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_a_module_its_probe_sites_cannot_be_compiled_into_is_refused_by_check(tmp_path):
    """A module of more than 8 MiB (instrument.MAX_MODULE_BYTES: a custom section
    will do) with `instrument` passed `check` (a module may have 256 MiB), and every
    start failed, "cannot instrument it: module of N bytes", until it failed for
    good.  `check` and `up` compile it with its probe sites as a start does."""
    from compartments import instrument
    payload = b"\x01x" + bytes(instrument.MAX_MODULE_BYTES)
    (tmp_path / "big.wasm").write_bytes(b"\0asm\x01\0\0\0\0" + _leb(len(payload)) + payload)
    system = tmp_path / "system.toml"
    system.write_text('[compartments.big]\nmodule = "big.wasm"\ninstrument = ["functions"]\n')
    r = run_wsuper("check", str(system))
    assert r.returncode == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {system}:3: compartments.big.instrument: "), line
    assert "could never start" in line and "at most 8388608 are instrumented" in line, line
    system.write_text('[compartments.big]\nmodule = "big.wasm"\n')     # not instrumented: fine
    assert run_wsuper("check", str(system)).returncode == 0


@pytest.mark.parametrize("policy_file", [False, True])
def test_probe_sites_that_need_more_memory_than_the_limit_are_refused_by_check(
        tmp_path, policy_file):
    """limits.memory bounds each memory of a compartment, the probe memory of a
    module rewritten for `instrument` too: `check` passed a module whose sites
    needed more (1,800 functions of two blocks each under limits.memory = 64 KiB),
    and every start failed ("its 9001 probe sites ... need 131072 bytes of probe
    memory, more than limits.memory") until the compartment failed for good.
    Refused at limits.memory, where it is written, with the engine's words."""
    (tmp_path / "many.wat").write_text(
        '(module (memory (export "memory") 1) (func (export "_start")) ' + "".join(
            "(func (param i32) (if (local.get 0) (then nop) (else nop)))"
            for _ in range(1800)) + ")")
    system = tmp_path / "system.toml"
    limit = '[limits]\nmemory = "64 KiB"\n'
    if policy_file:
        (tmp_path / "p.toml").write_text("# small\n" + limit)
        text = ('[compartments.many]\nmodule = "many.wat"\ninstrument = ["blocks"]\n'
                'policy = "p.toml"\n')
        where = f"{tmp_path / 'p.toml'}:3: limits.memory"
    else:
        text = ('[compartments.many]\nmodule = "many.wat"\ninstrument = ["blocks"]\n'
                '[compartments.many.limits]\nmemory = "64 KiB"\n')
        where = f"{system}:5: compartments.many.limits.memory"
    system.write_text(text)
    r = run_wsuper("check", str(system))
    assert r.returncode == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {where}: "), line
    assert re.search(r"many.wat.*its [0-9]+ probe sites \(instrument = \['blocks'\]\) need "
                     r"[0-9]+ bytes of probe memory, more than limits.memory \(65536 bytes\)",
                     line), line
    assert "could never start" in line, line
    system.write_text(text.replace('"64 KiB"', '"1 MiB"'))       # room for them: fine
    if policy_file:
        (tmp_path / "p.toml").write_text('[limits]\nmemory = "1 MiB"\n')
    assert run_wsuper("check", str(system)).returncode == 0


def test_a_declared_probe_that_covers_no_function_is_refused_by_check(tmp_path):
    """`check` passed a declared probe whose functions match none of the module's,
    and every start of the compartment said "cannot add declared probe ...: no
    function of calc matches ..." and ran without it."""
    system = tmp_path / "system.toml"
    text = (GOOD + 'instrument = ["functions"]\n[compartments.calc.probes.p]\n'
            'point = "functions"\nfunctions = ["nomatch_*", "#1"]\n')
    system.write_text(text)
    r = run_wsuper("check", str(system))
    assert r.returncode == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {system}:10: compartments.calc.probes.p.functions: "
                           "no function of calc matches nomatch_*, #1"), line
    system.write_text(text.replace('"#1"', '"#6"'))        # calc's first own function
    assert run_wsuper("check", str(system)).returncode == 0


def test_an_audit_directory_that_is_a_symbolic_link_is_refused_by_check_as_by_up(tmp_path):
    """`check` left a link where the audit's directory goes to `up` (exit 0), and
    `up` refused it (exit 2): "audit directory .../ln is not a directory"."""
    os.chmod(tmp_path, 0o700)
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink("real", tmp_path / "ln")
    system = tmp_path / "system.toml"
    system.write_text(GOOD.replace("[system]\n", '[system]\naudit = "ln/audit.jsonl"\n'))
    for command in ("check", "up"):
        r = run_wsuper(command, str(system))
        assert r.returncode == 2, r.output
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"wsuper: error: {system}:2: system.audit: audit directory "
                               f"{tmp_path}/ln is not a directory"), line
    assert not os.path.exists(tmp_path / "real" / "audit.jsonl")


@pytest.mark.parametrize("policy_text, line, key", [
    ('[limits]\nmemory = "64KiB"\n', 2, "limits.memory"),
    ('# tables\n[limits]\ntable_elements = 10\n', 3, "limits.table_elements"),
    ('[limits]\nmemory = "128MiB"\n', 2, "limits.memory"),      # too much for protect
])
def test_a_limit_from_a_policy_file_that_the_module_cannot_meet_is_reported_there(
        tmp_path, policy_text, line, key):
    """A module's memory or table larger than a limit the compartment's policy file
    sets was reported at the system file's [compartments.m] line, under
    compartments.m.limits.memory, a key that file does not have."""
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 2) (table 20 funcref)\n'
                                    '  (func (export "_start")))\n')
    (tmp_path / "p.toml").write_text(policy_text)
    system = tmp_path / "system.toml"
    system.write_text('[compartments.m]\nmodule = "m.wat"\nprotect = { no_access = "64KiB" }\n'
                      'policy = "p.toml"\n')
    r = run_wsuper("check", str(system))
    assert r.returncode == 2, r.output
    (out,) = r.stderr.strip().splitlines()
    assert out.startswith(f"wsuper: error: {tmp_path}/p.toml:{line}: {key}: "), out
    # written inline too, the system file's wins, and is named
    system.write_text(system.read_text() + f"{key} = {policy_text.split(' = ')[1]}")
    r = run_wsuper("check", str(system))
    (out,) = r.stderr.strip().splitlines()
    assert out.startswith(f"wsuper: error: {system}:5: compartments.m.{key}: "), out


@pytest.mark.parametrize("logs", ["/".join(["x" * 200] * 25), "y" * 300])
def test_a_log_directory_too_long_to_make_is_refused_by_check_as_by_up(tmp_path, logs):
    """A log directory past PATH_MAX (or with a part past NAME_MAX) passed `check`:
    looked at, it was "not there", to be made; `up` could not make it (exit 2),
    "File name too long", a reason its line cut off after the path."""
    os.chmod(tmp_path, 0o700)
    system = tmp_path / "system.toml"
    system.write_text(GOOD.replace("[system]\n", f'[system]\nlogs = "{logs}"\n'))
    r = run_wsuper("check", str(system))
    assert r.returncode == 2, r.output
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {system}:2: system.logs: cannot make log directory "
                           f"of "), line
    assert "(File name too long" in line, line


def test_a_system_file_changed_between_its_read_and_prepare_is_no_traceback(tmp_path):
    """prepare read the system file again (to name lines in its errors) with a plain
    open(): a file replaced meanwhile by one that is not UTF-8 (a deploy that
    moves it while `up` starts) ended in a UnicodeDecodeError traceback, and by a
    FIFO it waited for ever.  It is read as load reads it (regular, bounded,
    UTF-8), and a file that no longer reads only names no line."""
    from supervisor import policy, preflight
    path = tmp_path / "system.toml"
    path.write_text(GOOD)
    system = policy.load(str(path))
    path.write_bytes(b"\xff\xfe not the file that was read\n")
    plan = preflight.prepare(system)
    assert plan.main_interface["calc"] is not None
    path.unlink()
    os.mkfifo(path)
    bad = attrs.evolve(system, compartments={"calc": attrs.evolve(
        system.compartments["calc"], exports="Nope")})
    with pytest.raises(policy.PolicyError) as e:
        preflight.prepare(bad)           # opened without blocking: no reader needed
    assert "unknown interface 'Nope'" in str(e.value)


@pytest.mark.parametrize("command", ["check", "up"])
@pytest.mark.parametrize("key, value, what", [
    ("logs", "/proc/self/fdinfo", "log directory /proc/self/fdinfo"),
    ("audit", "/proc/self/fdinfo/x.jsonl", "audit directory /proc/self/fdinfo")])
def test_logs_or_audit_on_a_kernel_file_system_are_refused_naming_the_key(
        tmp_path, command, key, value, what):
    """A log or audit directory on /proc or /sys is the user's (or root's) and closed
    to others, so `check` passed it: `up` then ran with its log files stopped at
    once, or refused the audit it could not make.  Both refuse it, at the key."""
    system = tmp_path / "system.toml"
    system.write_text(GOOD.replace("[compartments.calc]", f'{key} = "{value}"\n\n'
                                   "[compartments.calc]"))
    r = run_wsuper(command, str(system), timeout=60)
    assert r.returncode == 2, r.output
    assert r.stderr.strip() == (f"wsuper: error: {system}:4: system.{key}: {what} is on the "
                                f"kernel's proc file system, where wsuper makes nothing; "
                                f"choose another path"), r.output


@pytest.mark.parametrize("command", ["check", "up"])
def test_a_socket_where_none_can_be_made_is_refused_naming_the_key(tmp_path, command):
    """`socket = "/proc/x.sock"`: the directory is root's and closed to others, so
    `check` passed it, and `up` failed to bind it after its checks with
    "wsuper: error: [Errno 2] No such file or directory" (EPERM in /sys), naming
    neither the socket nor the key.  Both refuse it at the key's line."""
    system = tmp_path / "system.toml"
    system.write_text(GOOD.replace("[compartments.calc]", 'socket = "/proc/x.sock"\n\n'
                                   "[compartments.calc]") + "external = true\n")
    r = run_wsuper(command, str(system), timeout=60)
    assert r.returncode == 2, r.output
    assert r.stderr.strip() == (f"wsuper: error: {system}:4: system.socket: socket directory "
                                f"/proc is on the kernel's proc file system, where wsuper "
                                f"makes nothing; choose another path"), r.output


def test_a_directory_to_make_on_a_kernel_file_system_is_refused_by_check_as_by_up(tmp_path):
    """What wsuper must make under a directory of the kernel's own file systems
    (`logs = "/proc/self/x/y"`, XDG_RUNTIME_DIR=/proc): root may write there, as far
    as access() tells, so `check` passed it (exit 0), and `up` could not make it
    ("No such file or directory", EPERM in /sys).  Both refuse it now."""
    system = tmp_path / "system.toml"
    system.write_text(GOOD.replace("[compartments.calc]", 'logs = "/proc/self/x/y"\n\n'
                                   "[compartments.calc]"))
    for command in ("check", "up"):
        r = run_wsuper(command, str(system), timeout=60)
        assert r.returncode == 2, r.output
        assert f"{system}:4: system.logs: cannot make log directory /proc/self/x/y: " \
            in r.stderr, r.output
    system.write_text(GOOD)
    env = {**os.environ, "XDG_RUNTIME_DIR": "/proc"}
    for command in ("check", "up"):
        r = run_wsuper(command, str(system), env=env)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert r.stderr.startswith("wsuper: error: ") and "/proc" in r.stderr, r.stderr


@pytest.mark.parametrize("where", ["PYTHONPATH", "python -m from it", "LD_LIBRARY_PATH",
                                   "PATH"])
def test_a_writable_grant_of_where_the_supervisor_looks_first_for_code_is_refused(
        tmp_path, where):
    """A directory on the supervisor's $PYTHONPATH (or the one `python -m
    supervisor.cli` runs from, sys.path[0]) or on its $LD_LIBRARY_PATH passed
    `check` and `up` as a writable grant: a module (`attrs.py`) or library a
    compartment put there was found before the real one and ran as the supervisor
    at the next `wsuper up` (checked with a planted attrs.py: it ran at `check`).
    So did one on $PATH, where `check --graph g.svg` finds `dot` and `build` clang.
    The real command, with that environment; read only, it is fine."""
    place = tmp_path / "place"
    place.mkdir()
    system = tmp_path / "s.toml"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    env.pop("PYTHONPATH", None)
    env.pop("LD_LIBRARY_PATH", None)
    cwd = ROOT
    if where == "python -m from it":
        cwd = str(place)
    elif where == "PATH":
        env["PATH"] = f"{place}:{env.get('PATH', '/usr/bin:/bin')}"
    else:
        env[where] = str(place)
    said = {"LD_LIBRARY_PATH": "a directory the dynamic loader looks in first",
            "PATH": "a directory of $PATH, where wsuper finds the programs it runs"}.get(
        where, "a directory the Python that runs wsuper imports from")
    (place / "pkg" / "data").mkdir(parents=True)
    # the directory, and a directory right in it (a package, a program there), are
    # refused; read only, or deeper (an editable install's checkout is on the import
    # path, and its demo grants examples/kv/data), they are fine (not for
    # LD_LIBRARY_PATH: glibc looks in its subdirectories too)
    deeper = 2 if where == "LD_LIBRARY_PATH" else 0
    for granted, extra, code in ((place, "", 2), (place / "pkg", "", 2),
                                 (place, ", read_only = true", 0),
                                 (place / "pkg" / "data", "", deeper)):
        system.write_text(f'[system]\nlogs = "{tmp_path / "logs"}"\n[compartments.calc]\n'
                          f'module = "{CALC}"\n[compartments.calc.grants]\n'
                          f'd = {{ host = "directory", path = "{granted}"{extra} }}\n')
        r = run_wsuper("check", str(system), cwd=cwd, env=env, timeout=120)
        assert r.returncode == code, (granted, extra, r.stdout, r.stderr)
        if code:
            assert f"{system}:6: compartments.calc.grants.d.path: {granted} would let " \
                f"compartment calc change {said}" in r.stderr, r.stderr


@pytest.mark.parametrize("file", ["module", "module's directory", "policy file", "schema",
                                  "file a schema imports", "system file"])
def test_a_file_that_decides_what_runs_that_anyone_may_change_is_refused(tmp_path, file):
    """A module of mode 0666 (or in a directory of mode 0777), a policy file, a schema
    (or a file it imports) or the system file that any user of the machine could
    write passed `check` and `up`: as root, what another user put in the module ran
    with the grants the system gives it, and what they wrote in the policy file
    became its grants.  Another user's own file, or one of yours in a sticky
    directory such as /tmp, is taken (running theirs is running theirs)."""
    place = tmp_path / "place"
    place.mkdir()
    shutil.copy(CALC, place / "calc.wat")
    shutil.copy(os.path.join(EXAMPLES, "hello.wat"), place / "hello.wat")
    (place / "lib.capnp").write_text("@0xd1c3f0a2b4e5f7d1;\nstruct Lib { x @0 :Int32; }\n")
    (place / "calc.capnp").write_text(open(SCHEMA).read().replace(
        "\n", '\nusing Lib = import "lib.capnp";\n', 1))
    (place / "p.toml").write_text('[grants]\ncalc = { compartment = "calc" }\n')
    system = place / "s.toml"
    system.write_text(f'[system]\nlogs = "{tmp_path / "logs"}"\nschemas = ["calc.capnp"]\n'
                      f'[compartments.calc]\nmodule = "calc.wat"\nexports = "Calc"\n'
                      f'[compartments.app]\nmodule = "hello.wat"\npolicy = "p.toml"\n')
    assert run_wsuper("check", str(system)).returncode == 0
    changed, said = {
        "module": (place / "calc.wat", f"{system}:5: compartments.calc.module: compartment "
                                       f"calc's module {place}/calc.wat may be written by any user"),
        "module's directory": (place, f"{system}:5: compartments.calc.module: compartment "
                                      f"calc's module {place}/calc.wat lies beneath {place}, "
                                      f"in which any user may rename or replace it"),
        "policy file": (place / "p.toml", f"{place}/p.toml: the policy file {place}/p.toml "
                                          f"may be written by any user"),
        "schema": (place / "calc.capnp", f"{system}:3: system.schemas[0]: the schema file "
                                         f"{place}/calc.capnp may be written by any user"),
        "file a schema imports": (place / "lib.capnp", f"{place}/lib.capnp: the schema file "
                                                       f"{place}/lib.capnp (which"),
        "system file": (system, f"{system}: the system file {system} may be written by any user"),
    }[file]
    os.chmod(changed, 0o777 if changed.is_dir() else 0o666)
    r = run_wsuper("check", str(system))
    assert r.returncode == 2 and said in r.stderr, r.stderr
    os.chmod(changed, 0o1777 if changed.is_dir() else 0o644)      # sticky: only yours is
    assert run_wsuper("check", str(system)).returncode == 0
    if os.getuid() == 0 and file == "module":
        os.chown(changed, 65534, 65534)          # another user's own: running theirs
        assert run_wsuper("check", str(system)).returncode == 0


def test_schema_copies_left_by_a_process_that_ended_without_its_exit_handlers_are_removed(
        tmp_path):
    """Each process that loads schemas copies them into a private directory of the
    temporary directory, removed by its exit handlers; one that ended without them
    (SIGKILL of `up`, the zygote's os._exit) left it, with copies of the user's
    schemas: /tmp of this machine held 451 after a day of test runs.  Each
    directory now holds a lock while its process lives, and a process making its
    own removes those of this user no process holds (and nothing else)."""
    import subprocess
    import sys
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    schema = tmp_path / "s.capnp"
    schema.write_text("@0xd1c3f0a2b4e5fb21;\ninterface S { a @0 () -> (); }\n")
    load = ("import os, sys, capnp_schemas\ncapnp_schemas.parse_elsewhere = None\n"
            f"capnp_schemas.load({str(schema)!r})\n"
            "print(capnp_schemas._mirror(), flush=True)\n")
    env = {**os.environ, "TMPDIR": str(tmp)}

    def python(code, **kw):
        return subprocess.Popen([sys.executable, "-c", load + code], cwd=ROOT, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)
    ended = python("os._exit(0)")                      # no exit handlers
    dead = read_line(ended).strip()
    ended.wait(60)
    alive = python("sys.stdin.read()")                 # lives on, holding its own
    held = read_line(alive).strip()
    old = time.time() - 3600
    legacy_old, legacy_new, open_to_others = (tmp / f"wsuper-schemas-{n}" for n in
                                              ("legacy1", "legacy2", "others"))
    for d in (legacy_old, legacy_new, open_to_others):
        d.mkdir(mode=0o700)
        (d / "kept.capnp").write_text("#")
    os.chmod(open_to_others, 0o755)
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept").write_text("x")
    (tmp / "wsuper-schemas-link").symlink_to(target)
    for d in (dead, held, open_to_others):
        os.utime(d, (old, old))
    os.utime(legacy_old, (old - 86400, old - 86400))
    try:
        assert os.path.isdir(dead) and os.path.isdir(held) and dead != held
        other = python("")                              # makes its own, and sweeps
        mine = read_line(other).strip()
        assert other.wait(60) == 0
        assert os.path.isdir(held)                      # its process lives: kept
    finally:
        alive.stdin.close()
        alive.wait(60)
    assert not os.path.exists(dead) and not legacy_old.exists()
    assert legacy_new.is_dir() and (open_to_others / "kept.capnp").exists()
    assert (target / "kept").exists() and (tmp / "wsuper-schemas-link").is_symlink()
    assert not os.path.exists(mine)                     # its own: at its exit, as before
