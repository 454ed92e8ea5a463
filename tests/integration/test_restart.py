"""Restart policies with real engines."""
import asyncio
import json
import os
import shutil
import signal
import threading
import time

import capnp
import pytest

import capnp_schemas
from tests.conftest import EXAMPLES, run_wsuper
from tests.integration.guests import program
from tests.integration.test_interop import SYSTEM


def test_a_program_that_keeps_trapping_is_restarted_then_fails_for_good(tmp_path):
    (tmp_path / "app.wat").write_text(program(
        "(call $log (i32.const 200) (i32.const 7))\n    unreachable", {"running": 200}))
    (tmp_path / "system.toml").write_text("""
[compartments.app]
module = "app.wat"
restart = "transient"
max_restarts = 2
restart_delay = 0.05
critical = true
[compartments.app.grants]
log = { host = "log" }
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"), merged=True)
    out = r.stdout.splitlines()
    assert r.returncode == 1
    assert out.count("[app] running") == 3                      # first run + 2 restarts
    assert ("wsuper: compartment app failed: trapped: wasm `unreachable` "
            "instruction executed (in function #") in r.stdout
    restarts = [l for l in out if l.startswith("wsuper: restarting app")]
    assert [l.split(" in ")[1].split(" s ")[0] for l in restarts] == ["0.05", "0.1"]
    assert any("failed for good: 2 restarts within 60 s" in l for l in out)
    assert out[-1] == "wsuper: app is critical: stopping the system"


def _system(tmp_path, restart):
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=os.path.join(EXAMPLES, "calc.wat"),
        socket=sock) + f'restart = "{restart}"\nrestart_delay = 0.05\n')
    return str(tmp_path / "system.toml"), str(sock)


async def _connect(path):
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))
    stream = await capnp.AsyncIoStream.create_unix_connection(path)
    client = capnp.TwoPartyClient(stream)
    gateway = client.bootstrap().cast_as(capnp_schemas.host.Gateway)
    calc = (await gateway.get("calc")).cap.as_interface(calc_schema.Calc)
    return client, calc


def test_a_killed_server_comes_back_granted_caps_work_passed_caps_stay_broken(tmp_path, wsuper):
    path, sock = _system(tmp_path, "transient")
    run = wsuper("up", path)
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])

    async def before():
        client, calc = await _connect(sock)
        counter = (await calc.newCounter()).counter
        assert (await counter.inc(1)).value == 1
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.1)
        # the restart is under way (or done): it is announced, then it is ready again
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, run.wait_for, "restarting calc")
        restarted_at = len(run.lines)
        new_ready = await loop.run_in_executor(None, run.wait_for, "ready calc", 30, restarted_at)
        with pytest.raises(capnp.KjException, match="gone|disconnected"):
            await counter.inc(1)                 # passed at run time: stays broken
        return (await calc.add(2, 3)).sum, new_ready   # granted by name: works again

    async def main():
        async with capnp.kj_loop():
            return await asyncio.wait_for(before(), 30)

    total, new_ready = asyncio.run(main())
    assert total == 5
    assert new_ready.startswith("wsuper: ready calc pid=") and f"pid={pid} " not in new_ready


def test_never_leaves_a_dead_server_dead_and_calls_fail_promptly(tmp_path, wsuper):
    path, sock = _system(tmp_path, "never")
    run = wsuper("up", path)
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])

    async def main():
        async with capnp.kj_loop():
            client, calc = await _connect(sock)
            os.kill(pid, signal.SIGKILL)
            await asyncio.get_running_loop().run_in_executor(
                None, run.wait_for, "compartment calc stopped")
            with pytest.raises(capnp.KjException, match="calc stopped: engine killed by SIGKILL"):
                await calc.add(1, 1)

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("start", ["(start $loop)", "(start $trap)", "(export \"_initialize\" (func $trap))"])
def test_a_compartment_that_cannot_start_holds_nobody_back(tmp_path, start):
    """A start function that never returns (or traps, or a trapping _initialize):
    that compartment fails to start (start_time bounds the wait), its restart
    policy decides, and everyone else's programs still run."""
    (tmp_path / "hang.wat").write_text(f"""(module (memory (export "memory") 1)
      (func $loop (loop $l (br $l))) (func $trap unreachable) {start}
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    (tmp_path / "app.wat").write_text(program("(call $log (i32.const 200) (i32.const 2))",
                                              {"hi": 200}))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.hang]
module = "hang.wat"
exports = "Calc"
max_restarts = 1
restart_delay = 0.05
[compartments.hang.limits]
start_time = 1
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
hang = {{ compartment = "hang" }}
""")
    t = time.monotonic()
    r = run_wsuper("up", str(tmp_path / "system.toml"), merged=True)
    assert "[app] hi" in r.stdout, r.stdout
    assert "compartment hang failed to start:" in r.stdout
    assert "compartment hang failed for good" in r.stdout
    assert "; calls from app to it now fail" in r.stdout       # app holds a grant to it
    assert r.returncode == 1                      # one compartment failed
    assert time.monotonic() - t < 30


def test_a_compartment_that_never_starts_and_keeps_restarting_holds_nobody_back(
        tmp_path, wsuper):
    """An outside review: programs waited until every compartment was ready or had
    failed for good.  A start function that loops until start_time, restarted within
    max_restarts = 3 in restart_window (the defaults: 30 s and 60 s, here 0.5 s and
    1 s), never fails for good (each restart leaves the window before the fourth),
    and no other compartment's program ever ran.  Its first failed start is enough:
    the others' programs run, and calls to it wait for its next start as they do."""
    (tmp_path / "hang.wat").write_text("""(module (memory (export "memory") 1)
      (func $loop (loop $l (br $l))) (start $loop)
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    (tmp_path / "app.wat").write_text(program("(call $log (i32.const 200) (i32.const 2))",
                                              {"hi": 200}))
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.hang]
module = "hang.wat"
exports = "Calc"
restart = "permanent"
restart_window = 1
[compartments.hang.limits]
start_time = 0.5
[compartments.app]
module = "app.wat"
[compartments.app.grants]
log = {{ host = "log" }}
hang = {{ compartment = "hang" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("restarting hang")
    run.wait_for("[app] hi", timeout=20)


def test_a_module_file_replaced_by_a_fifo_fails_that_start_and_holds_nobody_back(
        tmp_path, wsuper):
    """An outside review: a module file replaced while the system ran by a FIFO held
    the zygote's compiler in open() at the compartment's restart, and the zygote with
    it: no other compartment started again, and stopping waited for ever."""
    import shutil
    for name in ("a", "b"):
        shutil.copy(os.path.join(EXAMPLES, "calc.wat"), tmp_path / f"{name}.wat")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/s.sock"
[compartments.a]
module = "a.wat"
exports = "Calc"
external = true
max_restarts = 1
restart_delay = 0.05
[compartments.b]
module = "b.wat"
exports = "Calc"
external = true
restart_delay = 0.05
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    a = int(run.wait_for("ready a").split("pid=")[1].split()[0])
    b = int(run.wait_for("ready b").split("pid=")[1].split()[0])
    os.unlink(tmp_path / "a.wat")
    os.mkfifo(tmp_path / "a.wat")
    os.kill(a, signal.SIGKILL)
    assert "the file is a FIFO, not a regular file" in run.wait_for("compartment a failed to start")
    run.wait_for("compartment a failed for good")
    at = len(run.lines)
    os.kill(b, signal.SIGKILL)
    run.wait_for("ready b", start=at)                  # the zygote still starts engines
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(timeout=30) == 143


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_a_restart_opens_what_was_granted_not_where_a_planted_link_points(
        tmp_path, wsuper, kind):
    """An outside review: a grant's path is opened again at every start, following
    the directories on its way.  A compartment holding a writable grant of one of
    them replaced it by a symbolic link, crashed itself, and its next start opened
    the link's target as its grant: any directory (or file) of that name anywhere,
    outside every grant.  Each start must open what the path named when the system
    started, or fail naming the grant."""
    (tmp_path / "data" / "x" / "inner").mkdir(parents=True)
    (tmp_path / "data" / "x" / "inner.txt").write_text("granted")
    (tmp_path / "elsewhere" / "inner").mkdir(parents=True)
    (tmp_path / "elsewhere" / "inner.txt").write_text("not granted")
    name = "inner" if kind == "directory" else "inner.txt"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/s.sock"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
max_restarts = 1
restart_delay = 0.05
[compartments.calc.grants]
data = {{ host = "directory", path = "{tmp_path}/data" }}
inner = {{ host = "{kind}", path = "{tmp_path}/data/x/{name}", read_only = true }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    # what calc may do through `data`: rename x, and put a link in its place
    os.rename(tmp_path / "data" / "x", tmp_path / "data" / "x.old")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "x")
    at = len(run.lines)
    os.kill(pid, signal.SIGKILL)
    line = run.next_start("calc", at)    # ready (through the link), or refused
    assert f"cannot open {tmp_path}/data/x/{name} for grant inner: it now names another " \
        f"{kind} than when the system started" in line, line
    run.wait_for("compartment calc failed for good", start=at)
    assert not any(l.startswith("wsuper: ready calc") for l in run.lines[at:])


def test_a_file_grant_is_what_its_path_named_when_the_system_started_not_at_its_first_open(
        tmp_path, wsuper):
    """A grant is what its path named when the system started (docs/policy-reference.md).
    A file grant's identity was noted only at its first open (the start-up note
    stat'ed PATH + "/", which is ENOTDIR for a file): a holder whose first start
    failed before its file grant was opened (here: the file had a second link and
    refuse_hard_links) had its next start open wherever a link planted on the way
    meanwhile pointed, and granted that.  Since an outside review (policy.load
    opens each grant as a start does), that first start is never tried: the
    system is refused before anything starts, naming the grant; a restart after a
    planted link is test_a_restart_opens_what_was_granted_not_where_a_planted_link_points."""
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "data" / "x" / "inner.txt").write_text("granted")
    os.link(tmp_path / "data" / "x" / "inner.txt", tmp_path / "data" / "x" / "second")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "inner.txt").write_text("not granted")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/s.sock"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
max_restarts = 1
restart_delay = 2
[compartments.calc.grants]
data = {{ host = "directory", path = "{tmp_path}/data" }}
# its first start fails here: the file has two links
stop = {{ host = "file", path = "{tmp_path}/data/x/inner.txt", refuse_hard_links = true }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    assert run.finish(timeout=60) == 2
    line = run.wait_for("compartments.calc.grants.stop.path")
    assert "has 2 hard links (refuse_hard_links)" in line, line
    assert not any(l.startswith(("wsuper: ready calc", "wsuper: starting")) for l in run.lines)


def _noted(system):
    """A stand-in for the Supervisor of `system` that has noted its grants at start-up
    (Supervisor._note_granted, which needs nothing else of it)."""
    import types
    from supervisor import runtime
    fake = types.SimpleNamespace(system=system, _granted={})
    runtime.Supervisor._note_granted(fake)
    return fake


def _refusals(fake, compartment: str) -> dict:
    """grant name -> why its start would not grant what its path opens now (None: it
    would), asking Supervisor._not_granted of each of `compartment`'s grants."""
    from supervisor import hostcaps, runtime
    out = {}
    for g in fake.system.compartments[compartment].grants:
        opened = hostcaps.open_grant(g)
        try:
            out[g.name] = runtime.Supervisor._not_granted(fake, compartment, g, opened)
        finally:
            hostcaps.release(g.target, opened)
    return out


def _file_and_dir(tmp_path):
    """system.toml in tmp_path: compartment app with a file grant (f.txt) and a
    directory grant (d), both made here."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "system.toml").write_text(f"""
[compartments.app]
module = "{EXAMPLES}/calc.wat"
[compartments.app.grants]
file = {{ host = "file", path = "{tmp_path}/f.txt" }}
dir = {{ host = "directory", path = "{tmp_path}/d" }}
""")


def test_every_file_and_directory_grant_is_noted_before_any_engine_runs(tmp_path):
    """The class of the test above: whatever its kind (a file, a directory, a directory
    with a subdir), each grant's identity is noted at start-up, not at its first
    open (which may come after a compartment changed what is on its way)."""
    from supervisor import policy
    (tmp_path / "d" / "s").mkdir(parents=True)
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "system.toml").write_text(f"""
[compartments.app]
module = "{EXAMPLES}/calc.wat"
[compartments.app.grants]
file = {{ host = "file", path = "{tmp_path}/f.txt" }}
dir = {{ host = "directory", path = "{tmp_path}/d" }}
sub = {{ host = "directory", path = "{tmp_path}/d", subdir = "s" }}
env = {{ host = "environment", args = ["a"] }}
""")
    fake = _noted(policy.load(str(tmp_path / "system.toml")))
    ident = lambda p: (os.stat(p).st_dev, os.stat(p).st_ino)     # noqa: E731
    assert fake._granted == {"app.file": ident(tmp_path / "f.txt"),
                             "app.dir": ident(tmp_path / "d"),
                             "app.sub": ident(tmp_path / "d" / "s")}


def test_a_grant_not_there_when_the_system_started_is_not_granted_when_it_appears(tmp_path):
    """Nothing noted at start-up (the path was gone by then), nothing granted later:
    noted at its first open instead, a grant would be whatever its path led to then."""
    from supervisor import policy
    _file_and_dir(tmp_path)
    system = policy.load(str(tmp_path / "system.toml"))
    os.rename(tmp_path / "f.txt", tmp_path / "f.old")
    os.rename(tmp_path / "d", tmp_path / "d.old")
    fake = _noted(system)
    (tmp_path / "f.txt").write_text("y")          # there again, but not what was granted
    (tmp_path / "d").mkdir()
    for problem in _refusals(fake, "app").values():
        assert problem is not None and "could not be looked at when the system started" \
            in problem and "No such file or directory" in problem, problem


@pytest.mark.parametrize("what", ["file", "dir", "sub", "on the way"])
def test_a_grant_replaced_between_its_checks_and_the_start_is_not_granted(tmp_path, what):
    """policy.load checks what each grant's path names (not the supervisor's files,
    not a module, not the kernel's file systems); the system notes what it names
    when it starts, after preflight has compiled every module (seconds).  What was
    there in between became the grant: a directory on the way replaced by a link
    meanwhile (by another system's compartment, say) granted what the link
    pointed at, which no check had seen.  What was checked must still be there."""
    from supervisor import policy
    (tmp_path / "top" / "d" / "s").mkdir(parents=True)
    (tmp_path / "top" / "f.txt").write_text("x")
    (tmp_path / "system.toml").write_text(f"""
[compartments.app]
module = "{EXAMPLES}/calc.wat"
[compartments.app.grants]
file = {{ host = "file", path = "{tmp_path}/top/f.txt" }}
dir = {{ host = "directory", path = "{tmp_path}/top/d" }}
sub = {{ host = "directory", path = "{tmp_path}/top/d", subdir = "s" }}
""")
    system = policy.load(str(tmp_path / "system.toml"))
    if what == "file":
        os.rename(tmp_path / "top" / "f.txt", tmp_path / "f.old")
        (tmp_path / "top" / "f.txt").write_text("never checked")
    elif what == "dir":
        os.rename(tmp_path / "top" / "d", tmp_path / "d.old")
        (tmp_path / "top" / "d" / "s").mkdir(parents=True)
    elif what == "sub":
        os.rename(tmp_path / "top" / "d" / "s", tmp_path / "s.old")
        (tmp_path / "top" / "d" / "s").mkdir()
    else:                                   # a link on the way, to a look-alike elsewhere
        (tmp_path / "elsewhere" / "d" / "s").mkdir(parents=True)
        (tmp_path / "elsewhere" / "f.txt").write_text("elsewhere")
        os.rename(tmp_path / "top", tmp_path / "top.old")
        os.symlink(tmp_path / "elsewhere", tmp_path / "top")
    refused = set()
    for name, problem in _refusals(_noted(system), "app").items():
        if problem is not None:
            assert "replaced after wsuper up checked it" in problem, problem
            refused.add(name)
    assert refused == {"file": {"file"}, "dir": {"dir", "sub"}, "sub": {"sub"},
                       "on the way": {"file", "dir", "sub"}}[what]


@pytest.mark.parametrize("change", ["gone", "another kind"])
def test_a_grant_that_changes_while_policy_load_checks_it_fails_the_load(tmp_path,
                                                                       monkeypatch, change):
    """policy.load looks at a grant's path (is it a directory?), then resolves it and
    pins what it names (Grant.checked).  When the path was gone by the pin, or named
    another kind of file, the grant went on unpinned, and a start granted whatever
    the path named by then, never checked (fail open).  Now the load fails, naming
    the grant.  (The race is played by resolving the path elsewhere at that moment.)"""
    from supervisor import policy
    _file_and_dir(tmp_path)
    elsewhere = {"gone": str(tmp_path / "nothing"), "another kind": "/dev/null"}[change]
    for grant in ("d", "f.txt"):
        real = os.path.realpath
        monkeypatch.setattr(policy.os.path, "realpath",
                            lambda p, *a, grant=grant, **k: elsewhere
                            if p.rstrip("/") == f"{tmp_path}/{grant}" else real(p, *a, **k))
        with pytest.raises(policy.PolicyError) as e:
            policy.load(str(tmp_path / "system.toml"))
        name = {"d": "dir", "f.txt": "file"}[grant]
        assert f"grants.{name}.path" in str(e.value), str(e.value)
        assert "changed while it was being checked" in str(e.value), str(e.value)
        monkeypatch.setattr(policy.os.path, "realpath", real)


def test_a_grant_policy_load_never_checked_is_not_granted(tmp_path):
    """A system whose grants never went through policy.load's checks (built some
    other way: no Grant.checked) is granted nothing by path: the start fails
    closed, it does not grant whatever the path names."""
    import attrs
    from supervisor import policy
    _file_and_dir(tmp_path)
    system = policy.load(str(tmp_path / "system.toml"))
    assert _refusals(_noted(system), "app") == {"dir": None, "file": None}
    app = system.compartments["app"]
    unchecked = attrs.evolve(system, compartments={"app": attrs.evolve(app, grants=tuple(
        attrs.evolve(g, checked=None) for g in app.grants))})
    for problem in _refusals(_noted(unchecked), "app").values():
        assert problem is not None and "wsuper up never checked it" in problem, problem


def test_a_system_started_through_a_link_keeps_its_own_files_when_the_link_moves(tmp_path):
    """A system started as cur/system.toml, cur a link to v1 (the usual deploy), is
    v1's system (its identity: 61f5539).  But its relative paths and ${SYSTEM_DIR}
    grants went through `cur` at each use: once cur pointed at v2, a restart read
    v2's module (never checked by this system's preflight: its imports, its memory,
    its exports) and opened v2's data, which the grant refused ('it now names
    another directory ... start the system anew'), so the compartment never came
    back.  Every path relative to a system or policy file names that file's own
    directory, links resolved once, at load."""
    import types
    from supervisor import hostcaps, policy, runtime
    for v in ("v1", "v2"):
        (tmp_path / v / "data").mkdir(parents=True)
        (tmp_path / v / "calc.wat").write_text(open(f"{EXAMPLES}/calc.wat").read())
        (tmp_path / v / "calc.capnp").write_text(open(f"{EXAMPLES}/calc.capnp").read())
        (tmp_path / v / "client.toml").write_text(
            'grants.data = { host = "directory", path = "${SYSTEM_DIR}/data" }\n')
        (tmp_path / v / "system.toml").write_text("""
[system]
schemas = ["calc.capnp"]
audit = "audit.jsonl"
[compartments.calc]
module = "calc.wat"
exports = "Calc"
[compartments.calc.grants]
data = { host = "directory", path = "${SYSTEM_DIR}/data" }
[compartments.app]
module = "calc.wat"
policy = "client.toml"
""")
    os.symlink(tmp_path / "v1", tmp_path / "cur")
    system = policy.load(str(tmp_path / "cur" / "system.toml"))
    v1 = str(tmp_path / "v1")
    assert system.path == str(tmp_path / "cur" / "system.toml")     # as given, for errors
    assert system.schemas == (f"{v1}/calc.capnp",) and system.audit == f"{v1}/audit.jsonl"
    for comp in system.compartments.values():
        assert comp.module == f"{v1}/calc.wat"
        (g,) = [g for g in comp.grants if g.name == "data"]
        assert g.path == f"{v1}/data", g.path
    fake = types.SimpleNamespace(system=system, _granted={})
    runtime.Supervisor._note_granted(fake)
    os.symlink(tmp_path / "v2", tmp_path / "next")
    os.replace(tmp_path / "next", tmp_path / "cur")               # the deploy
    for comp in system.compartments.values():                     # a restart, after it
        (g,) = [g for g in comp.grants if g.name == "data"]
        opened = hostcaps.open_grant(g)
        try:
            assert runtime.Supervisor._not_granted(fake, comp.name, g, opened) is None
        finally:
            hostcaps.release(g.target, opened)


def _in_engine(pid: int, *calls: str):
    """Make engine `pid` run `calls` (C expressions, as gdb evaluates them, or gdb's
    `shell` commands) as a taken-over engine could (close, sigaction, tgkill of
    itself are in its seccomp allow-list); skipped where gdb cannot attach."""
    import shutil
    import subprocess
    gdb = shutil.which("gdb")
    if gdb is None:
        pytest.skip("needs gdb to act inside an engine")
    exe = os.readlink(f"/proc/{pid}/exe")
    args = [gdb, "-p", str(pid), "-batch", "-nx", "-ex", "set sysroot /", "-ex", f"file {exe}"]
    for c in calls:
        args += ["-ex", c if c.startswith("shell ") else f"print {c}"]
    r = subprocess.run(args + ["-ex", "detach"], capture_output=True, text=True, timeout=60)
    results = [l for l in r.stdout.splitlines() if l.startswith("$")]
    if len(results) != len([c for c in calls if not c.startswith("shell ")]):
        pytest.skip(f"gdb could not act inside the engine: {r.stdout[-500:]} {r.stderr[-500:]}")
    return results


def _gone(pid: int, timeout: float = 30) -> bool:
    """Whether process `pid` is gone (or a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(params=["1", "0"], ids=["fast-lane", "trio"])
def engine_path(request, monkeypatch):
    """Engines' connections on the fast lane, and on trio's sockets (WSUPER_NATIVE=0)."""
    monkeypatch.setenv("WSUPER_NATIVE", request.param)
    return request.param


def test_an_engine_that_closes_its_connection_and_lives_on_is_killed_and_restarted(
        tmp_path, wsuper, engine_path):
    """A taken-over engine closes its socket and stays (stopped here: its own loop
    would see the socket gone and exit): it was never noticed, not restarted, and
    calls to it each waited their whole call_time.  Its connection's end is its
    end: killed, restarted, and the grant reaches the new incarnation."""
    path, sock = _system(tmp_path, "transient")
    run = wsuper("up", path)
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    fd = next(int(f) for f in os.listdir(f"/proc/{pid}/fd")
              if os.readlink(f"/proc/{pid}/fd/{f}").startswith("socket:"))
    # stopped before gdb lets it go, with its socket closed
    _in_engine(pid, f"(int)close({fd})", f"shell kill -STOP {pid}")
    line = run.wait_for("restarting calc")
    assert "closed its connection" in line, line
    new = run.wait_for("ready calc", start=run.lines.index(line))
    assert f"pid={pid} " not in new
    assert _gone(pid)

    async def main():
        async with capnp.kj_loop():
            client, calc = await _connect(sock)
            return (await calc.add(2, 3)).sum

    assert asyncio.run(asyncio.wait_for(main(), 30)) == 5


def test_an_engine_let_go_that_ignores_sigterm_is_killed(tmp_path, wsuper, engine_path):
    """When a compartment restarts or fails for good with its engine still there
    (its program ended, and it serves), the engine is sent SIGTERM, which a
    taken-over engine may ignore: it must not run on beside its next incarnation
    (the peer it was is gone, so its connection's end kills it, on either path)."""
    (tmp_path / "slow.wat").write_text("""(module (memory (export "memory") 1)
      (func $loop (loop $l (br $l))) (start $loop)
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    # a program that serves too: its engine stays once its program has ended
    (tmp_path / "app.wat").write_text(program("(call $log (i32.const 200) (i32.const 2))",
                                              {"hi": 200}).rstrip()[:-1] + """
  (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.slow]
module = "slow.wat"
exports = "Calc"
restart = "never"
[compartments.slow.limits]
start_time = 8
[compartments.app]
module = "app.wat"
exports = "Calc"
restart = "permanent"
max_restarts = 1
restart_delay = 0.05
[compartments.app.grants]
log = {{ host = "log" }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    # app is ready; its program runs once slow is settled (start_time): time to act
    first = int(run.wait_for("ready app").split("pid=")[1].split()[0])
    _in_engine(first, f"(long)signal({int(signal.SIGTERM)}, 1)")       # SIG_IGN
    k = run.lines.index(run.wait_for("restarting app"))
    second = int(run.wait_for("ready app", start=k).split("pid=")[1].split()[0])
    assert _gone(first), "the first incarnation ignored SIGTERM and is still running"
    run.wait_for("compartment app failed for good", start=k)
    assert _gone(second)


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("restart", ["never", "permanent", "transient"])
def test_a_dead_zygote_stops_the_system_at_once_whatever_the_restart_policies(
        tmp_path, wsuper, restart):
    """The zygote killed takes every engine with it, and nothing can start again.
    The system stopped only when a compartment next tried to start: with restart =
    "never", or a long restart_delay, it served on without an engine, its callers
    told the engine was "killed by SIGKILL"."""
    path, _sock = _system(tmp_path, restart)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("restart_delay = 0.05", "restart_delay = 60"))
    run = wsuper("up", path)
    engine = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    zygote = _parent(engine)
    assert _parent(zygote) == run.proc.pid
    os.kill(zygote, signal.SIGKILL)
    line = run.wait_for("the zygote")
    assert f"the zygote (pid {zygote}) is gone (killed by SIGKILL)" in line, line
    assert "no compartment can start again; stopping" in line
    assert run.finish() == 1
    assert _gone(engine)


@pytest.mark.parametrize("how", ["SIGTERM", "wsuper stop"])
def test_a_stopped_zygote_does_not_hold_the_systems_stop(tmp_path, wsuper, how):
    """The engines' exits are the zygote's news: with the zygote stopped (SIGSTOP),
    or wedged, the supervisor waited for them for ever once asked to stop, and
    neither SIGTERM nor `wsuper stop` ended it.  It stops, and takes the zygote and
    every engine with it."""
    path, _sock = _system(tmp_path, "transient")
    run = wsuper("up", path)
    engine = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    zygote = _parent(engine)
    assert _parent(zygote) == run.proc.pid
    os.kill(zygote, signal.SIGSTOP)
    try:
        if how == "SIGTERM":
            run.proc.send_signal(signal.SIGTERM)
        else:
            assert run_wsuper("stop", path).returncode == 0
        assert run.finish(timeout=30) == (143 if how == "SIGTERM" else 0)
    finally:
        try:
            os.kill(zygote, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert _gone(engine) and _gone(zygote)


def test_why_an_engine_ended_is_its_own_not_an_earlier_incarnations(tmp_path, wsuper):
    """The reason an engine ended ends with its last stderr line; the lines were kept
    by compartment, so an incarnation that said nothing (killed, say) was given the
    last words of one before it, long gone: "killed by SIGKILL: error: cannot load
    module ..." of an engine that had loaded it and served."""
    import shutil
    module = tmp_path / "calc.wat"
    shutil.copy(os.path.join(EXAMPLES, "calc.wat"), module)
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=module, socket=sock)
        + "restart_delay = 0.5\nmax_restarts = 10\n")
    run = wsuper("up", str(tmp_path / "system.toml"))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    (tmp_path / "broken.wat").write_text("(module garbage")
    os.replace(tmp_path / "broken.wat", module)            # its next start cannot load it
    os.kill(pid, signal.SIGKILL)
    k = run.lines.index(run.wait_for("compartment calc failed to start"))
    assert "cannot load module" in run.lines[k]            # said by that engine, on stderr
    shutil.copy(os.path.join(EXAMPLES, "calc.wat"), tmp_path / "good.wat")
    os.replace(tmp_path / "good.wat", module)
    line = run.wait_for("ready calc", start=k)
    pid = int(line.split("pid=")[1].split()[0])
    k = run.lines.index(line)
    os.kill(pid, signal.SIGKILL)
    line = run.wait_for("restarting calc", start=k)
    assert "(engine killed by SIGKILL; restart" in line, line
    assert "cannot load" not in line


@pytest.mark.parametrize("restart", ["never", "transient"])
def test_a_system_whose_one_program_never_starts_ends_beside_its_servers(tmp_path, restart):
    """An outside review: the system's only program fails every start (its start
    function traps) beside a compartment that only serves it: `wsuper up` said
    'all compartments ready; serving until Ctrl-C' and served for ever, while the
    same program alone ended it with exit 1 ('no compartment could start')."""
    (tmp_path / "bad.wat").write_text("""(module (memory (export "memory") 1)
      (func $trap unreachable) (start $trap) (func (export "_start")))""")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
[compartments.app]
module = "bad.wat"
restart = "{restart}"
max_restarts = 1
restart_delay = 0.05
[compartments.app.grants]
calc = {{ compartment = "calc" }}
""")
    r = run_wsuper("up", str(tmp_path / "system.toml"), merged=True, timeout=30)
    assert r.returncode == 1, r.stdout
    assert "compartment app failed to start:" in r.stdout
    assert "serving until Ctrl-C" not in r.stdout


def test_a_call_waiting_for_a_start_past_start_time_is_told_why_it_failed(tmp_path, wsuper):
    """An outside review: an external call made while the compartment starts waits
    for it; its start function loops past start_time, and the call failed
    'compartment calc is gone: it failed to start', the cause said to the
    operator only."""
    (tmp_path / "loop.wat").write_text("""(module (memory (export "memory") 1)
      (func $l (loop $x (br $x))) (start $l)
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=tmp_path / "loop.wat",
        socket=sock) + 'restart = "never"\n[compartments.calc.limits]\nstart_time = 1\n')
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("listening on")

    async def main():
        async with capnp.kj_loop():
            _client, calc = await _connect(str(sock))
            with pytest.raises(capnp.KjException) as e:
                await calc.add(1, 1)
            return str(e.value)

    said = asyncio.run(asyncio.wait_for(main(), 30))
    assert "it failed to start: it did not start within 1 s (limit start_time)" in said, said


def test_status_gives_no_uptime_to_an_incarnation_that_is_not_ready(tmp_path, wsuper):
    """An outside review: calc was killed and its next incarnation's start function
    loops (its module replaced meanwhile): `wsuper status` showed it 'restarting'
    with the new engine's pid and an uptime counted from when the killed one was
    ready, as if it had been up all along."""
    shutil.copy(f"{EXAMPLES}/calc.wat", tmp_path / "calc.wat")
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
[compartments.calc]
module = "calc.wat"
exports = "Calc"
external = true
restart_delay = 0
[compartments.calc.limits]
start_time = 30
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    time.sleep(1.1)                            # an uptime of 1 s at least
    (tmp_path / "calc.wat").write_text("""(module (memory (export "memory") 1)
      (func $l (loop $x (br $x))) (start $l)
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    os.kill(pid, signal.SIGKILL)
    run.wait_for("restarting calc")
    deadline = time.monotonic() + 20
    while True:
        r = run_wsuper("status", str(tmp_path / "system.toml"), "--json")
        calc = json.loads(r.stdout)["compartments"][0]
        if calc["pid"] not in (None, pid):      # the new engine, starting
            break
        assert time.monotonic() < deadline, calc
        time.sleep(0.1)
    assert calc["state"] == "restarting" and calc["uptime_s"] is None, calc


def test_status_keeps_the_calls_an_engine_served_natively_after_its_restart(tmp_path, wsuper):
    """An outside review: the calls the fast lane forwarded to an engine and that it
    answered were counted in the lane's record of that engine only, which goes
    with it: after a restart `wsuper status` showed calc SERVED 658 where 27,482
    had been served (the calls Python forwarded, counted by compartment, stayed),
    a count that went down."""
    path, sock = _system(tmp_path, "transient")
    run = wsuper("up", path)
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])

    async def calls(n):
        async with capnp.kj_loop():
            _client, calc = await _connect(sock)
            for i in range(n):
                assert (await calc.add(i, 1)).sum == i + 1

    def served():
        r = run_wsuper("status", path, "--json")
        return json.loads(r.stdout)["compartments"][0]["served"]

    asyncio.run(asyncio.wait_for(calls(200), 30))
    before = served()
    assert before >= 200
    os.kill(pid, signal.SIGKILL)
    restarting = run.wait_for("restarting calc")
    run.wait_for("ready calc", 30, run.lines.index(restarting))
    assert served() >= before


def test_a_call_to_a_compartment_left_stopped_by_its_program_is_told_why(tmp_path, wsuper):
    """An outside review: calc's program trapped and restart = "never" left it
    stopped; calls to it failed 'compartment calc stopped: its program failed
    (restart = 'never')', the trap said to the operator only."""
    (tmp_path / "trap.wat").write_text("""(module (memory (export "memory") 1)
      (func (export "_start") unreachable)
      (func (export "wsuper_dispatch") (param i32 i64 i32 i32 i32) (result i32) i32.const 0))""")
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(SYSTEM.format(
        schema=os.path.join(EXAMPLES, "calc.capnp"), module=tmp_path / "trap.wat",
        socket=sock) + 'restart = "never"\n')
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("compartment calc stopped")

    async def main():
        async with capnp.kj_loop():
            _client, calc = await _connect(str(sock))
            with pytest.raises(capnp.KjException) as e:
                await calc.add(1, 1)
            return str(e.value)

    said = asyncio.run(asyncio.wait_for(main(), 30))
    assert "compartment calc stopped: its program failed: compartment calc trapped: wasm " \
           "`unreachable` instruction executed" in said, said


def test_a_program_that_traps_at_once_under_a_short_window_restarts_ever_slower(tmp_path, wsuper):
    """An outside review: restart_delay = 0 and a window shorter than a restart takes
    restarted a trapping program ~30 times a second for ever (every line 'in 0 s';
    max_restarts never trips).  Its restarts in a row now back off."""
    (tmp_path / "app.wat").write_text(program("unreachable", {}))
    (tmp_path / "system.toml").write_text("""
[compartments.app]
module = "app.wat"
restart = "permanent"
max_restarts = 1000
restart_window = 0.1
restart_delay = 0
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("restarting app in 0.16 s", timeout=20)
    delays = [l.split("restarting app in ")[1].split(" s ")[0]
              for l in run.lines if "restarting app in " in l]
    assert delays[:5] == ["0", "0.02", "0.04", "0.08", "0.16"]


def _external_calc(tmp_path, module: str, extra: str = "") -> str:
    """A system whose compartment calc (`module`) is called from outside on
    tmp_path/s.sock, with `extra` lines after its table; the system file's path."""
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/s.sock"
[compartments.calc]
module = "{module}"
exports = "Calc"
external = true
""" + extra)
    return str(tmp_path / "system.toml")


def _client(work, timeout: float = 30):
    """Run the coroutine function `work` in pycapnp's event loop; what it returns."""
    async def main():
        async with capnp.kj_loop():
            return await asyncio.wait_for(work(), timeout)
    return asyncio.run(main())


def test_callers_of_a_compartment_whose_grant_cannot_be_opened_are_not_told_its_host_path(
        tmp_path, wsuper):
    """The operator is told the path a restart could not open; the callers of the
    compartment were told it too ('it failed to start: cannot open
    /home/alice/private for grant data: ...'), and the reason of a compartment
    failed for good now carries its last cause: both only name the grant."""
    secret = tmp_path / "alice-private"
    secret.mkdir()
    run = wsuper("up", _external_calc(tmp_path, f"{EXAMPLES}/calc.wat", f"""max_restarts = 1
restart_delay = 0.05
[compartments.calc.grants]
data = {{ host = "directory", path = "{secret}" }}
"""))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])

    async def calls():
        client, calc = await _connect(str(tmp_path / "s.sock"))
        assert (await calc.add(2, 3)).sum == 5
        os.rmdir(secret)
        at = len(run.lines)
        os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, run.wait_for, "failed for good", 30, at)
        with pytest.raises(capnp.KjException) as e:
            await calc.add(1, 1)
        return str(e.value)

    told = _client(calls)
    assert f"cannot open {secret} for grant data" in "\n".join(run.lines)  # the operator
    assert "cannot open its grant data (ENOENT)" in told, told
    assert "alice-private" not in told and str(tmp_path) not in told, told


@pytest.mark.parametrize("folder", ["alice-plugins", "alice\u00a0plugins", "alice\tplugins"])
def test_callers_of_a_module_whose_start_function_traps_are_not_told_its_host_path(
        tmp_path, wsuper, folder):
    """An engine's reason for a failed start names its module's path ('cannot
    instantiate /home/alice/plugins/calc.wat: ...'), and the module decides whether
    its start function traps: the compartments and clients calling it were told the
    host path of another compartment's module.  They are told its file name; also
    when the path has a character that is not printable (a no-break space, a tab),
    which the engine's reason writes escaped: that form matched no path, and the
    whole host path went on to the callers (an outside review)."""
    plugins = tmp_path / folder
    plugins.mkdir()
    text = open(os.path.join(EXAMPLES, "calc.wat")).read()
    marker = "(memory (export \"memory\") 1)"
    assert marker in text
    (plugins / "calc.wat").write_text(text.replace(
        marker, marker + "\n  (func $boom unreachable)\n  (start $boom)"))
    run = wsuper("up", _external_calc(tmp_path, f"{plugins}/calc.wat", f"""max_restarts = 0
[compartments.other]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
"""))
    run.wait_for("failed for good")

    async def calls():
        client, calc = await _connect(str(tmp_path / "s.sock"))
        with pytest.raises(capnp.KjException) as e:
            await calc.add(1, 1)
        return str(e.value)

    told = _client(calls)
    assert "cannot instantiate" in "\n".join(run.lines) and (   # the operator is told
        folder != "alice-plugins" or f"{plugins}/calc.wat" in "\n".join(run.lines))
    assert "cannot instantiate calc.wat" in told, told
    assert "alice" not in told and str(tmp_path) not in told, told


def test_a_module_that_no_longer_compiles_in_a_folder_with_a_newline_tells_callers_no_path(
        tmp_path, wsuper):
    """The zygote's child that says why a module cannot be loaded wrote its reason as
    it was: a newline in a folder's name split it, the supervisor kept the last line,
    and that part of the module's host path went on to the callers unmatched by
    told_callers.  Every engine child's last words are one printable line now."""
    plugins = tmp_path / "alice\nplugins"
    plugins.mkdir()
    shutil.copy(os.path.join(EXAMPLES, "calc.wat"), plugins / "calc.wat")
    module = json.dumps(str(plugins / "calc.wat"))[1:-1]      # a TOML basic string's text
    run = wsuper("up", _external_calc(tmp_path, module, f"""max_restarts = 1
restart_delay = 0.05
[compartments.other]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
"""))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    (plugins / "calc.wat").write_text("(module (func $broken")     # no longer compiles
    at = len(run.lines)
    os.kill(pid, signal.SIGKILL)
    run.wait_for("failed for good", start=at)

    async def calls():
        client, calc = await _connect(str(tmp_path / "s.sock"))
        with pytest.raises(capnp.KjException) as e:
            await calc.add(1, 1)
        return str(e.value)

    told = _client(calls)
    assert "cannot load module calc.wat: expected" in told, told
    assert "plugins" not in told and "alice" not in told and str(tmp_path) not in told, told


def test_an_engine_that_dies_while_the_zygote_is_stopped_is_noticed(tmp_path, wsuper):
    """An engine's exit was the zygote's news alone: with the zygote stopped
    (SIGSTOP) or wedged, an engine killed meanwhile stayed "ready" in `wsuper
    status`, was never restarted, and every call to it waited its whole call_time,
    for as long as the zygote said nothing.  The supervisor now sees the process
    end by itself (a pidfd), and the compartment's restart policy decides."""
    path, _sock = _system(tmp_path, "transient")
    run = wsuper("up", path)
    engine = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    zygote = _parent(engine)
    os.kill(zygote, signal.SIGSTOP)
    # the zygote goes on after 15 s, whatever happens (so that the test ends; run's
    # lines are read without a deadline while none comes)
    later = threading.Timer(15, os.kill, (zygote, signal.SIGCONT))
    later.start()
    try:
        os.kill(engine, signal.SIGKILL)
        line = run.wait_for("restarting calc")
        # seen by itself, not by the zygote's report of it once it went on
        assert "the zygote did not report" in line, line
        status = run_wsuper("status", "--json", path)
        assert status.returncode == 0, status.output
        calc = [c for c in json.loads(status.stdout)["compartments"] if c["name"] == "calc"][0]
        assert calc["pid"] != engine and calc["state"] != "ready"
    finally:
        later.cancel()
        os.kill(zygote, signal.SIGCONT)
    run.next_start("calc", len(run.lines) - 1)


def test_a_restart_that_a_stopped_zygote_never_answers_fails_and_a_critical_one_stops(
        tmp_path, wsuper):
    """A start waited for the zygote's answer without a bound: with the zygote stopped
    (SIGSTOP) or wedged, a compartment whose engine ended stayed "restarting" for
    as long as it said nothing (17 s and counting with start_time = 2).  A start now
    fails once the zygote has said nothing for process.ANSWER_SILENCE (or the
    compartment's start_time, if longer: a slow compile is told apart by the
    zygote's {"busy": N} lines), saying so; a critical compartment stops the
    system."""
    (tmp_path / "app.wat").write_text(program(
        "(call $log (i32.const 200) (i32.const 7))\n    unreachable", {"running": 200}))
    (tmp_path / "system.toml").write_text("""
[compartments.app]
module = "app.wat"
restart = "transient"
max_restarts = 1
restart_delay = 0.5
critical = true
[compartments.app.limits]
start_time = 2
[compartments.app.grants]
log = { host = "log" }
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    run.wait_for("ready app")
    with open(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children") as f:
        zygote, = [int(pid) for pid in f.read().split()]     # the supervisor's only child
    os.kill(zygote, signal.SIGSTOP)
    # the zygote goes on after 20 s, whatever happens (run's lines are read without a
    # deadline while none comes): before, the restart then went on as if nothing were
    later = threading.Timer(20, os.kill, (zygote, signal.SIGCONT))
    later.start()
    try:
        line = run.wait_for("compartment app failed to start", timeout=30)
        assert f"the zygote (pid {zygote}) said nothing for 5 s" in line, line
        assert "stopped or wedged" in line, line
        assert run.wait_for("app is critical: stopping the system", timeout=10)
    finally:
        later.cancel()
        os.kill(zygote, signal.SIGCONT)
    assert run.finish(timeout=30) == 1


def test_a_main_object_a_compartment_handed_out_never_reaches_its_next_incarnation(
        tmp_path, wsuper):
    """A compartment's main object handed out by the compartment itself
    (wsuper.object(0) in an answer) is called as its proxy while that engine serves
    it; the proxy (granted by name, or the gateway's) goes on to the next incarnation
    after a restart.  The object handed out does not: like every object the old
    incarnation handed out, it fails "disconnected" at once, whether its holder got it
    directly or through another compartment's grant (its membrane), and none of its
    calls reaches the new incarnation, which has the same main object id."""
    from tests.integration.guests import HERE
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{tmp_path}/s.sock"
[compartments.calc]
module = "{HERE}/selfer.wat"
exports = "Calc"
external = true
restart = "permanent"
restart_delay = 0.05
[compartments.relay]
module = "{HERE}/relaycap.wat"
exports = "Calc"
external = true
[compartments.relay.grants]
next = {{ compartment = "calc", revocable = true }}
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    run.wait_for("ready relay")
    calc_schema = capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp"))

    async def body():
        client, calc = await _connect(str(tmp_path / "s.sock"))
        gateway = client.bootstrap().cast_as(capnp_schemas.host.Gateway)
        relay = (await gateway.get("relay")).cap.as_interface(calc_schema.Calc)
        # calc's own main object, handed out by calc: directly, and through relay.next
        direct = (await calc.newCounter()).counter.cast_as(calc_schema.Calc)
        through = (await relay.newCounter()).counter.cast_as(calc_schema.Calc)
        # (sum = 1 + 2 + 1000 x the calls this incarnation has served)
        assert [(await direct.add(1, 2)).sum, (await through.add(1, 2)).sum] == [3003, 4003]
        restarted_at = len(run.lines)
        os.kill(pid, signal.SIGKILL)
        await asyncio.get_running_loop().run_in_executor(
            None, run.wait_for, "ready calc", 30, restarted_at)
        assert (await calc.add(1, 2)).sum == 1003      # the proxy: the new incarnation
        failed = []
        for handed in (direct, through):
            with pytest.raises(capnp.KjException) as e:
                await handed.add(1, 2)
            failed.append(str(e.value).splitlines()[0])
        # neither reached it: its next call is the second it serves
        return failed, (await calc.add(1, 2)).sum

    failed, after = _client(body, 60)
    assert all("disconnected" in f and "compartment calc is gone" in f for f in failed), failed
    assert after == 2003
