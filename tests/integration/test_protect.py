"""Memory protection (issue 16) with real engines and C plugins built by `wsuper build`:
a null dereference, a write into a string literal or a const table of function
pointers, and a read() into .rodata each stop with the address and the region
named, while the supervisor and the other compartments carry on; in shared and
per_call instances, after memory.grow and after a restart."""
import os
import re

import pytest

from tests.conftest import GUESTS_C, ROOT, run_wsuper

PROBE_SCHEMA = os.path.join(GUESTS_C, "protect.capnp")
NA = "no-access region [0x0, 0x1000) (the null page)"
RO = "read-only region [0x1000, 0x2000) (.rodata)"


@pytest.fixture(scope="session")
def plugins(tmp_path_factory):
    from supervisor import bindgen, toolchain
    out = tmp_path_factory.mktemp("protect")
    include = str(out / "include")
    bindgen.generate(PROBE_SCHEMA, include)
    built = {n: toolchain.build([os.path.join(GUESTS_C, f"protect_{n}.c")], str(out / f"{n}.wasm"))
             for n in ("null", "literal", "vtable", "read")}
    built["plain_null"] = toolchain.build([os.path.join(GUESTS_C, "protect_null.c")],
                                          str(out / "plain_null.wasm"), protect=False)
    # -mbulk-memory: memset/memcpy of a variable size are memory.fill/memory.copy
    built["server"] = toolchain.build(
        [os.path.join(GUESTS_C, "protect_server.c")], str(out / "server.wasm"), reactor=True,
        include=[include], extra=["-mbulk-memory", "-ftls-model=local-exec"])
    built["driver"] = toolchain.build([os.path.join(GUESTS_C, "protect_driver.c")],
                                      str(out / "driver.wasm"), include=[include])
    return built


def _up(tmp_path, body, schemas=True, **kw):
    (tmp_path / "input.txt").write_text("stdin data")
    head = f'[system]\nschemas = ["{PROBE_SCHEMA}"]\n' if schemas else ""
    (tmp_path / "system.toml").write_text(head + body.replace("INPUT", str(tmp_path / "input.txt")))
    return run_wsuper("up", str(tmp_path / "system.toml"), merged=True, **kw)


def _program(name, module, extra=""):
    return f"""
[compartments.{name}]
module = "{module}"
restart = "never"
{extra}
[compartments.{name}.grants]
stdout = {{ host = "log" }}
stdin = {{ host = "file", path = "INPUT", read_only = true }}
"""


def _lines(out, name):
    return [l[len(name) + 3:] for l in out.splitlines() if l.startswith(f"[{name}] ")]


def test_four_c_plugins_stop_naming_address_and_region_while_the_rest_carry_on(tmp_path,
                                                                              plugins):
    r = _up(tmp_path, "".join(_program(n, plugins[n]) for n in ("null", "literal", "vtable",
                                                                  "read")) + f"""
[compartments.server]
module = "{plugins['server']}"
exports = "Probe"
[compartments.driver]
module = "{plugins['driver']}"
[compartments.driver.grants]
stdout = {{ host = "log" }}
probe = {{ compartment = "server" }}
env = {{ host = "environment", args = ["ok", "ok", "ok"] }}
""")
    out = r.stdout
    # 1. NULL
    assert "wsuper: compartment null failed: trapped: access to no-access " \
           f"memory at 0x0 ({NA}) (in " in out, out
    # 2. a string literal: the address it printed is the one that traps
    at = re.search(r"literal: at (0x[0-9a-f]+), writing", out).group(1)
    assert 0x1000 <= int(at, 16) < 0x2000
    assert f"compartment literal failed: trapped: write to read-only memory at {at} ({RO}) (in " in out
    # 3. a const table of function pointers: its second entry
    ops = re.search(r"vtable: ops at (0x[0-9a-f]+), 2\+3=5", out).group(1)
    assert f"compartment vtable failed: trapped: write to read-only memory at {int(ops, 16) + 4:#x} " \
           f"({RO}) (in " in out
    assert "not protected" not in out
    # 4. read() into .rodata: EFAULT, said on its stderr (a stream of its own: in any
    # order with its stdout), the literal intact
    said = "stderr: wsuper: fd_read: EFAULT: a host call was given protected memory: " \
           f"[0x1000, 0x1008) is written at 0x1000, in the {RO}"
    lines = _lines(out, "read")
    assert said in lines and [l for l in lines if l != said] == [
        "read: into 0x1000",
        'read: returned -1, errno EFAULT; greeting is "constant greeting"',
        'read: into the stack: 5 bytes "stdin"']
    # the others carried on
    assert "wsuper: finished read exit=0" in out and "wsuper: finished driver exit=0" in out
    assert _lines(out, "driver") == [f"ok -> ok: call {i} of this instance, ops[1](2,3)=5"
                                     for i in (1, 2, 3)]
    assert r.returncode == 1            # three programs failed


CASES = [
    ("null-read", f"access to no-access memory at 0x0 ({NA}) (in probe_serve_run)"),
    ("null-write", f"access to no-access memory at 0x0 ({NA}) (in probe_serve_run)"),
    ("literal", f"write to read-only memory at 0x1000 ({RO}) (in probe_serve_run)"),
    ("vtable", f"write to read-only memory at 0x1### ({RO}) (in probe_serve_run)"),
    # bulk memory, through the checks inserted in front of memory.fill / memory.copy
    ("fill", f"write to read-only memory at 0x1002 ({RO}) (in probe_serve_run)"),
    ("copy-from-null", f"access to no-access memory at 0x8 ({NA}) (in probe_serve_run)"),
    # the wsuper ABI: the host refuses to write into .rodata or read the null page
    ("params", "a host call was given protected memory: [0x1000, 0x1020) is written at "
     f"0x1000, in the {RO}"),
    ("lookup-null", f"a host call was given protected memory: [0x10, 0x14) starts in the {NA}"),
    # after memory.grow (8 MiB of malloc): the same pages, the same protection
    ("grow", f"write to read-only memory at 0x1000 ({RO}) (in probe_serve_run)"),
]


@pytest.mark.parametrize("instance", ["shared", "per_call"])
def test_a_server_stops_each_case_and_keeps_serving(tmp_path, plugins, instance):
    args = ["ok"] + [c for c, _ in CASES] + ["read", "ok"]
    r = _up(tmp_path, f"""
[compartments.server]
module = "{plugins['server']}"
exports = "Probe"
instance = "{instance}"
[compartments.server.grants]
stdin = {{ host = "file", path = "INPUT", read_only = true }}
[compartments.driver]
module = "{plugins['driver']}"
[compartments.driver.grants]
stdout = {{ host = "log" }}
probe = {{ compartment = "server" }}
env = {{ host = "environment", args = {args!r} }}
""".replace("'", '"'))
    lines = _lines(r.stdout, "driver")
    assert lines[0] == "ok -> ok: call 1 of this instance, ops[1](2,3)=5", r.stdout
    for (case, why), line in zip(CASES, lines[1:]):
        pattern = re.escape(f"{case} -> error -2: compartment server trapped: {why}")
        assert re.fullmatch(pattern.replace("\\#\\#\\#", "[0-9a-f]{3}"), line), line
    assert lines[-2] == "read -> read returned -1, errno EFAULT"
    # a shared instance served every call (its .data counted them; its const table
    # is intact); a per_call one starts from scratch, protected, every time
    calls = len(args) if instance == "shared" else 1
    assert lines[-1] == f"ok -> ok: call {calls} of this instance, ops[1](2,3)=5"
    assert "wsuper: finished driver exit=0" in r.stdout and r.returncode == 0


def test_protection_holds_after_a_restart(tmp_path, plugins):
    r = _up(tmp_path, _program("null", plugins["null"]).replace(
        'restart = "never"', 'restart = "transient"\nmax_restarts = 1\nrestart_delay = 0.05'))
    traps = [l for l in r.stdout.splitlines() if "trapped" in l]
    assert len(traps) == 2 and traps[0] == traps[1], r.stdout
    assert f"access to no-access memory at 0x0 ({NA})" in traps[0]


def test_protect_false_turns_it_off_and_a_plain_module_is_not_protected(tmp_path, plugins):
    """What traps above is the protection: without it the same programs run on."""
    r = _up(tmp_path, _program("null", plugins["null"], "protect = false")
            + _program("literal", plugins["literal"], "protect = false")
            + _program("plain", plugins["plain_null"]))
    assert _lines(r.stdout, "null")[-1] == "null: read 0 (not protected)"
    assert _lines(r.stdout, "literal")[-1] == "literal: now Hello, world (not protected)"
    assert _lines(r.stdout, "plain")[-1] == "null: read 0 (not protected)"
    assert "trapped" not in r.stdout and r.returncode == 0


def test_asking_for_protection_of_a_module_laid_out_without_it_is_refused(tmp_path, plugins):
    r = _up(tmp_path, _program("app", plugins["plain_null"],
                               'protect = { no_access = "4 KiB", read_only = "auto" }'),
            schemas=False)
    assert r.returncode == 2
    err = r.stdout.strip()
    assert len(err.splitlines()) == 1 and "system.toml:5: compartments.app.protect.no_access: " \
        in err, err
    assert "4096 bytes (whole 4096-byte pages) would cover the module's data .rodata at " \
           "[0x400, " in err and "build it with wsuper build" in err


def test_a_bad_protect_value_is_one_line_with_file_line_and_key(tmp_path, plugins):
    r = _up(tmp_path, _program("app", plugins["null"], 'protect = { no_access = "4 KB" }'),
            schemas=False)
    assert r.returncode == 2
    err = r.stdout.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"wsuper: error: {tmp_path / 'system.toml'}:5: "
                          "compartments.app.protect.no_access: must be"), err


def test_a_protected_memory_may_not_grow_past_the_static_reservation(tmp_path, plugins):
    big = '[compartments.app.limits]\nmemory = "128 MiB"\n'
    r = _up(tmp_path, _program("app", plugins["null"], "protect = true") + big, schemas=False)
    assert r.returncode == 2 and "compartments.app.limits.memory: " in r.stdout
    assert "at most 64 MiB" in r.stdout
    # by default such a compartment runs, unprotected (nothing was asked)
    r = _up(tmp_path, _program("app", plugins["null"]) + big, schemas=False)
    assert _lines(r.stdout, "app")[-1] == "null: read 0 (not protected)"


def test_check_says_how_each_memory_is_protected_as_up_enforces_it(tmp_path, plugins):
    (tmp_path / "input.txt").write_text("")
    (tmp_path / "system.toml").write_text(
        (_program("null", plugins["null"]) + _program("off", plugins["null"], "protect = false")
         + _program("plain", plugins["plain_null"])).replace("INPUT", str(tmp_path / "input.txt")))
    r = run_wsuper("check", str(tmp_path / "system.toml"), merged=True)
    assert r.returncode == 0, r.stdout
    heads = {l.split(":")[0]: l for l in r.stdout.splitlines() if not l.startswith(" ")}
    assert heads["null"].endswith("; memory protected: no-access [0x0, 0x1000), "
                                  "read-only [0x1000, 0x2000)"), heads
    assert heads["off"].endswith("; memory not protected (protect = false)")
    assert heads["plain"].endswith("; memory not protected (the module declares no layout)")


def test_check_names_a_declared_layout_it_cannot_use_and_warns(tmp_path):
    """An outside review (r266): a module that declares its layout in a malformed
    wsuper.protect section, or in two, runs unprotected when the system file asks
    nothing, and `check` said "the module declares no layout" (of two, it took the
    last: protected as one says, unprotected as the other); now its line says why,
    and a warning names the compartment and the module."""
    import wasmtime

    from compartments import wasmbin
    data = wasmtime.wat2wasm('(module (memory (export "memory") 2) '
                             '(data (i32.const 4096) "constant") (func (export "_start")))')
    good = wasmbin.custom_section(4096, 4096, 8192)
    modules = {"good": data + good,
               "twice": data + wasmbin.custom_section(0, 0, 0) + good,
               "broken": data + good.replace(b"wsuper.protect\x01", b"wsuper.protect\x07")}
    system = ""
    for name, module in modules.items():
        (tmp_path / f"{name}.wasm").write_bytes(module)
        system += f'[compartments.{name}]\nmodule = "{name}.wasm"\n'
    (tmp_path / "system.toml").write_text(system)
    r = run_wsuper("check", str(tmp_path / "system.toml"))
    assert r.returncode == 0, r.stderr
    heads = {l.split(":")[0]: l for l in r.stdout.splitlines() if not l.startswith(" ")}
    assert heads["good"].endswith("; memory protected: no-access [0x0, 0x1000), "
                                  "read-only [0x1000, 0x2000)"), heads
    twice = "it has 2 wsuper.protect sections (a module declares its layout once)"
    broken = "its wsuper.protect section is malformed: version 7 (this wsuper reads version 1)"
    assert heads["twice"].endswith(f"; memory not protected (its declared layout cannot be "
                                   f"used: {twice})"), heads
    assert heads["broken"].endswith(f"; memory not protected (its declared layout cannot be "
                                    f"used: {broken})"), heads
    warnings = [l for l in r.stderr.splitlines() if "warning" in l]
    assert warnings == [
        f"wsuper: warning: compartment twice: {tmp_path}/twice.wasm: memory not protected: {twice}",
        f"wsuper: warning: compartment broken: {tmp_path}/broken.wasm: memory not protected: "
        f"{broken}"], r.stderr


_DATA_AT_A_GLOBAL = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (global $g i32 (i32.const 16))
  (memory (export "memory") 2)
  (data (offset (i32.add (global.get $g) (i32.const 8))) "hello from data at 24\\n")
  (func (export "_start")
    (i32.store (i32.const 8192) (i32.const 24))
    (i32.store (i32.const 8196) (i32.const 22))
    (drop (call $w (i32.const 1) (i32.const 8192) (i32.const 1) (i32.const 8200)))))
"""


def test_a_null_page_over_data_placed_by_a_constant_expression_is_refused(tmp_path):
    """Data whose offset reads a global (or is extended-const arithmetic) is where
    wasmtime evaluates it: a required no-access region over it is refused before
    anything starts, as over data at an i32.const (it once ran, its data unreadable)."""
    (tmp_path / "app.wat").write_text(_DATA_AT_A_GLOBAL)
    (tmp_path / "system.toml").write_text(
        '[compartments.app]\nmodule = "app.wat"\nprotect = { no_access = "4 KiB" }\n'
        '[compartments.app.grants]\nstdout = { host = "log" }\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        assert r.returncode == 2, r.stdout + r.stderr
        err = (r.stdout + r.stderr).strip()
        assert len(err.splitlines()) == 1 and "compartments.app.protect.no_access: " in err
        assert "would cover the module's data segment at [0x18, 0x2e)" in err, err


def test_a_plugin_laid_out_by_hand_as_plugins_md_says_is_protected_as_asked(tmp_path):
    """docs/plugins.md's own clang line (-Wl,--global-base=4096 and its layout.c),
    no wsuper.protect section, and the system file's protect it gives: check refused
    it ("the module's read-only data [0x1000, 0x1ac0) holds no whole 4096-byte
    page"), since read_only = "auto" took .rodata alone from the name section and
    rounded it inward, where wsuper build's declaration runs to the page-aligned
    .data.  Both read the same extent now, and a write into a literal traps."""
    from compartments import wasmbin
    from supervisor import toolchain
    text = open(os.path.join(ROOT, "docs", "plugins.md"), encoding="utf-8").read()
    flags = re.search(r"-Wl,--global-base=\d+", text).group(0)
    layout = re.search(r"```c\n\s*(__attribute__\(\(aligned.*?)```", text, re.S).group(1)
    setting = re.search(r"`(protect = \{ no_access = .*?\})`", text).group(1)
    (tmp_path / "layout.c").write_text(layout)
    module = toolchain.build([os.path.join(GUESTS_C, "protect_literal.c"),
                              str(tmp_path / "layout.c")], str(tmp_path / "literal.wasm"),
                             protect=False, extra=[flags])
    f = wasmbin.facts(open(module, "rb").read())
    assert f.declared is None and f.rodata[1] % 4096, f.rodata   # a partial last page
    r = _up(tmp_path, _program("literal", module, setting), schemas=False)
    at = re.search(r"literal: at (0x[0-9a-f]+), writing", r.stdout).group(1)
    assert f"compartment literal failed: trapped: write to read-only memory at {at} ({RO})" \
        in r.stdout, r.stdout


_START_FILLS_NULL_PAGE = '''(module
  (memory (export "memory") 2)
  (func $guest_fill (memory.fill (i32.const 8) (i32.const 0) (i32.const 4)))
  (func $init (call $guest_fill))
  (start $init)
  (func (export "_start")))'''


def test_a_start_function_stopped_by_a_check_names_its_function_and_the_region(tmp_path):
    """An outside review: a start function runs before the engine protects the
    pages, so a memory.fill into the null page there passed the check's own
    1-byte access and stopped at the check's `unreachable`.  The report said
    "wasm `unreachable` instruction executed (in wsuper.protect.check_write)": a
    trap the guest never executed, in a function the module as built lacks (the
    start function's trap was explained without the regions)."""
    (tmp_path / "app.wat").write_text(_START_FILLS_NULL_PAGE)
    (tmp_path / "system.toml").write_text(
        '[compartments.app]\nmodule = "app.wat"\nrestart = "never"\n'
        'protect = { no_access = "4 KiB" }\n'
        '[compartments.app.grants]\nstdout = { host = "log" }\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"), merged=True)
    out = r.stdout + (r.stderr or "")
    assert "its start function trapped: a bulk-memory instruction (memory.fill, memory.copy " \
           "or memory.init) reached protected memory (no-access region [0x0, 0x1000) " \
           "(the null page)) before its pages were protected (in guest_fill)" in out, out
    assert "wsuper.protect.check" not in out and "unreachable" not in out, out


def test_a_start_functions_trap_in_a_function_named_with_a_newline_is_one_line(tmp_path):
    """An outside review: the function a trap names comes from the module's name
    section (any text at all).  One named "fill\\nwsuper: ready app pid=1" split the
    engine's error in two lines, and the supervisor's own line took the last one as
    the reason: "compartment app failed to start: engine exited with code 3: wsuper:
    ready app pid=1)", the guest's words in place of the trap."""
    (tmp_path / "app.wat").write_text(_START_FILLS_NULL_PAGE.replace(
        "(func $guest_fill ", '(func $guest_fill (@name "fill\\nwsuper: ready app pid=1") '))
    (tmp_path / "system.toml").write_text(
        '[compartments.app]\nmodule = "app.wat"\nrestart = "never"\n'
        'protect = { no_access = "4 KiB" }\n'
        '[compartments.app.grants]\nstdout = { host = "log" }\n')
    r = run_wsuper("up", str(tmp_path / "system.toml"), merged=True)
    out = r.stdout + (r.stderr or "")
    assert "before its pages were protected (in fill\\nwsuper: ready app pid=1)" in out, out
    failed = [line for line in out.splitlines() if "failed to start: " in line]
    assert failed and all("its start function trapped" in line for line in failed), out


_DECLARES_NOTHING = '''(module
  (memory (export "memory") 2)
  (data (i32.const 0) "hello")
  (@custom "wsuper.protect" "\\01\\00\\00\\00")
  (func (export "_start") (i32.store (i32.const 0) (i32.const 42))))'''


@pytest.mark.parametrize("setting, key", [
    ("true", "compartments.app.protect.no_access"),
    ('{ no_access = "auto" }', "compartments.app.protect.no_access"),
    ('{ read_only = "auto" }', "compartments.app.protect.read_only"),
])
def test_protection_asked_for_of_a_module_that_declares_an_empty_layout_is_refused(
        tmp_path, setting, key):
    """An outside review: a module whose wsuper.protect section declares an empty
    layout (no null page, no read-only data: what wsuper build declares for a module
    without data) under `protect = true` ran unprotected (its store at address 0
    went through) and `check` said "memory not protected (the module declares no
    layout)": a requirement of the system file, not met, said nowhere."""
    (tmp_path / "app.wat").write_text(_DECLARES_NOTHING)
    (tmp_path / "system.toml").write_text(
        f'[compartments.app]\nmodule = "app.wat"\nrestart = "never"\nprotect = {setting}\n'
        '[compartments.app.grants]\nstdout = { host = "log" }\n')
    for command in ("check", "up"):
        r = run_wsuper(command, str(tmp_path / "system.toml"))
        err = (r.stdout + r.stderr).strip()
        assert r.returncode == 2, err
        assert len(err.splitlines()) == 1 and f"system.toml:4: {key}: " in err, err
    (tmp_path / "system.toml").write_text(
        '[compartments.app]\nmodule = "app.wat"\nrestart = "never"\n'
        '[compartments.app.grants]\nstdout = { host = "log" }\n')
    r = run_wsuper("check", str(tmp_path / "system.toml"))       # the default: quietly none
    assert r.returncode == 0 and "memory not protected (its declared layout cannot be " \
        "enforced" in r.stdout, r.stdout + r.stderr


def test_the_transcript_memory_protection_md_opens_with_is_what_up_says(tmp_path, plugins):
    """docs/memory-protection.md's first example, run as it says (each program under
    restart = "never", with a stdout log): every line it shows, and no other, each
    compartment's in its order. It showed the failures without the lines around
    them (`ready`, `null: reading *NULL`, `stopped`), untimed, and under a restart
    policy it did not say, where a reader sees each one restarted three times."""
    from supervisor.output import strip_time
    text = open(os.path.join(ROOT, "docs", "memory-protection.md"), encoding="utf-8").read()
    shown = re.search(r"```\n\$ wsuper up system.toml\n(.*?)```", text, re.S).group(1)
    r = _up(tmp_path, "".join(_program(n, plugins[n]) for n in ("literal", "null")),
            schemas=False)
    assert r.returncode == 1, r.stdout

    def by_compartment(lines):
        lines = [re.sub(r"pid=\d+ module=\S+", "pid", strip_time(l)) for l in lines.splitlines()
                 if l]
        return {n: [l for l in lines if f" {n} " in l or l.startswith(f"[{n}]")]
                for n in ("literal", "null")}
    assert by_compartment(r.stdout) == by_compartment(shown)
