"""The zygote's module cache and modules that fail to compile.

The zygote compiled one module at a time, and while it did no other engine
started (now compilers run beside its loop).  A module that took long to fail (a rewriting for probes that fails at
its last step: about 35 s for an 8 MiB module) was compiled again at each of
its restarts; each attempt took longer than the restart intensity's window, so
it never failed for good, the zygote was never free again, and no other
compartment's program ever ran (the others wait for every start to settle).
"""
import json
import os
import signal
import time

import pytest
import wasmtime

from compartments import wasm, wasmbin, zygote
from tests.conftest import EXAMPLES
from supervisor.policy import MAX_MODULE_BYTES     # what check and up allow

# valid, but its rewriting for `stores` fails at the end: the stores of memory 0
# get a scratch local of memory 1's address type (i64), which does not validate
#: A module wasmtime takes that cannot be instrumented: its functions of 50,000
#: locals print as more text than wasm-tools may print for it (instrument.py).
#: (It had a 64-bit memory 1, which the rewriter now instruments.)
MANY_LOCALS = "".join(f"  (func (local {'i32 ' * 50_000}))\n" for _ in range(6))
FAILS_TO_INSTRUMENT = ('(module\n  (memory (export "memory") 1)\n' + MANY_LOCALS +
                       '  (func (export "_start") (i32.store (i32.const 8) (i32.const 1))))\n')


@pytest.fixture
def modules():
    m = zygote._Modules(wasmtime.Engine(wasm.engine_config()))
    runs = []
    compile_ = m._compile

    def counted(*args, **kwargs):
        runs.append(args)
        return compile_(*args, **kwargs)
    m._compile = counted
    m.runs = runs
    yield m
    for fd in m.descriptors():
        os.close(fd)


def test_a_module_that_fails_to_compile_is_not_compiled_again_until_its_file_changes(
        tmp_path, modules):
    path = tmp_path / "bad.wat"
    path.write_text(FAILS_TO_INSTRUMENT)
    first = modules.get(str(path), ("stores",))
    assert first[0] is None and "cannot instrument it: wasm-tools print printed more" in first[1]
    for _ in range(3):                  # restarts: the same answer, no compiler
        assert modules.get(str(path), ("stores",)) == first
    assert len(modules.runs) == 1
    # another variant of the same file is a module of its own
    assert modules.get(str(path), ())[0] is not None and len(modules.runs) == 2
    # the file changed: compiled again
    path.write_text(FAILS_TO_INSTRUMENT.replace("(i32.const 1)", "(i32.const 2)"))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert modules.get(str(path), ("stores",))[0] is None and len(modules.runs) == 3
    # and once it is fixed, it loads
    path.write_text(FAILS_TO_INSTRUMENT.replace(MANY_LOCALS, ""))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert modules.get(str(path), ("stores",))[0] is not None and len(modules.runs) == 4


@pytest.mark.parametrize("then", ["fails", "loads"])
def test_a_module_rewritten_in_place_with_its_size_and_time_kept_is_compiled_again(
        tmp_path, modules, then):
    """The cache knew a file by its device, inode, size and modification time; a
    copy that keeps times (`cp -p`, `rsync -t`, `touch -r`) of a module of the same
    size over the old one kept the old compiled code (or the old failure) for every
    restart after.  The change time, which no one sets, says the file changed."""
    good = '(module (memory (export "memory") 1) (func (export "_start")))'
    bad = FAILS_TO_INSTRUMENT
    first, second = (good, bad.ljust(len(good))) if then == "fails" else \
        (bad, good.ljust(len(bad)))
    first, second = first.ljust(len(second)), second.ljust(len(first))
    path = tmp_path / "m.wat"
    path.write_text(first)
    st = os.stat(path)
    was = modules.get(str(path), ("stores",))
    assert (was[0] is None) == (then == "loads"), was
    time.sleep(0.01)
    with open(path, "r+") as f:                 # in place: same inode, same size
        f.write(second)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_ino == st.st_ino
    now = modules.get(str(path), ("stores",))
    assert (now[0] is None) == (then == "fails"), now
    assert len(modules.runs) == 2


def test_a_compiler_that_ran_out_of_time_or_died_is_tried_again_later(
        tmp_path, modules, monkeypatch):
    """Not the module's fault, perhaps (a busy machine, memory short): tried again,
    but not at once: after ten times the failed run, and at least FAILED_RETRY."""
    path = tmp_path / "ok.wat"
    path.write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    monkeypatch.setattr(zygote, "FAILED_RETRY", 0.5)
    monkeypatch.setattr(zygote, "_compile_into", lambda *a, **k: 2)
    began = time.monotonic()
    assert modules.get(str(path))[0] is None
    took = time.monotonic() - began
    assert modules.get(str(path))[0] is None and len(modules.runs) == 1
    # the retry's time is 0.5 s after the failed run, or ten times that run's
    # length, which a loaded machine can make the longer (CI once: 0.6 s was short)
    (_key, _error, retry), = modules._failed.values()
    assert retry - began >= 0.5 and retry - began <= max(0.5, 10 * took) + took
    time.sleep(max(0.0, retry - time.monotonic()) + 0.01)
    monkeypatch.undo()
    assert modules.get(str(path))[0] is not None and len(modules.runs) == 2


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "too large"])
def test_a_module_file_that_is_no_regular_file_is_refused_without_waiting(
        tmp_path, modules, kind):
    """An outside review: a module file is read again at each start, and one replaced
    while the system ran by a FIFO held the compiler in open() for good, and with it
    the zygote: no engine started again, `wsuper stop` waited for ever, and the
    compiler outlived the system.  /dev/zero was read until memory ran out.  Only
    a regular file of at most MAX_MODULE_BYTES is read; the answer is kept until
    the file changes, as for any module at fault."""
    import threading
    path = tmp_path / "m.wat"
    done = threading.Event()
    if kind == "fifo":
        os.mkfifo(path)

        def writer():       # were it opened, it is let go (with nothing in it)
            while not done.wait(0.2):
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    return
                except OSError:
                    continue
        threading.Thread(target=writer, daemon=True).start()
    elif kind == "device":
        os.symlink("/dev/zero", path)
    elif kind == "directory":
        path.mkdir()
    else:
        with open(path, "wb") as f:          # sparse: no disk used
            f.truncate(MAX_MODULE_BYTES + 1)
    try:
        fds, why = modules.get(str(path))
    finally:
        done.set()
    want = {"fifo": "a FIFO, not a regular file", "device": "a device, not a regular file",
            "directory": "a directory, not a regular file",
            "too large": f"has {MAX_MODULE_BYTES + 1:,} bytes, more than"}[kind]
    assert fds is None and why.startswith(f"cannot load module {path}: the file ") \
        and want in why, why
    assert modules.get(str(path)) == (None, why) and len(modules.runs) == 1
    with pytest.raises(wasm.ModuleFileError, match=want.split(",")[0]):
        wasm.read_module(str(path))


def _section(i: int, body: bytes) -> bytes:
    """A module's section `i` holding `body`."""
    return bytes([i]) + wasmbin._uleb(len(body)) + body


def _slow_to_compile(instructions: int) -> bytes:
    """A valid module whose one function is `instructions` additions in a row:
    cranelift takes about 5 s of CPU for a million (3 MB)."""
    body = b"\x00\x41\x00" + b"\x41\x01\x6a" * instructions + b"\x1a\x0b"
    return (b"\x00asm\x01\x00\x00\x00" + _section(1, b"\x01\x60\x00\x00")
            + _section(3, b"\x01\x00") + _section(10, b"\x01" + wasmbin._uleb(len(body)) + body))


def test_a_module_slow_to_compile_is_stopped_at_the_compilers_limit_and_kept_failed(
        tmp_path, modules, monkeypatch):
    """While the zygote's compiler works no other engine starts, and a module can be
    made to compile for minutes (a compartment that may write its own module, or a
    file replaced while the system runs).  The compiler's CPU is bounded whether or
    not the module is rewritten for probes (it was only with probes), the failure
    says why, and the same file is not compiled again at each restart."""
    monkeypatch.setattr(zygote, "COMPILE_SECONDS", 1)
    path = tmp_path / "slow.wasm"
    path.write_bytes(_slow_to_compile(1_500_000))
    first = modules.get(str(path))
    assert first[0] is None
    assert first[1] == (f"cannot load module {path}: compiling it took more than 1 s of "
                        f"CPU (the compiler's limit)")
    assert modules.get(str(path)) == first and len(modules.runs) == 1
    path.write_bytes(_slow_to_compile(10))          # a fixed file loads
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert modules.get(str(path))[0] is not None


def test_a_module_that_needs_more_memory_to_compile_than_the_compilers_limit_is_kept_failed(
        tmp_path, modules, monkeypatch):
    """A compile's memory grows with the module (one function of 200,000 additions
    took 217 MB), and the compilers had no bound but the CPU's: a module that needs
    tens of GB, compiled by two to four compilers at once, took the machine's memory.
    Past the compiler's address-space limit wasmtime aborts the compiler; the
    failure says which limit it was, and the file is not compiled again until it
    changes."""
    monkeypatch.setattr(zygote, "COMPILE_MEMORY", 64 << 20)
    path = tmp_path / "big.wasm"
    path.write_bytes(_slow_to_compile(200_000))
    first = modules.get(str(path))
    assert first == (None, f"cannot load module {path}: compiling it needed more than 64 MiB "
                           f"of memory (the compiler's limit)")
    assert modules.get(str(path)) == first and len(modules.runs) == 1
    path.write_bytes(_slow_to_compile(10))          # a fixed file loads
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert modules.get(str(path))[0] is not None


@pytest.mark.parametrize("limit", ["memory", "cpu", "cpu, SIGXCPU ignored"])
def test_wsuper_check_and_up_compile_a_module_within_the_compilers_limits(
        tmp_path, monkeypatch, limit, request):
    """`wsuper check` and `up` compile every module once before anything starts, and
    did so in their own process, with no bound: a module made to compile for
    minutes held them, and one that needs more memory than there is aborted the
    supervisor (Rust's allocator aborts the process) or took the machine's memory.
    The check now compiles in a child under the zygote's compiler limits, and a
    module past one is refused naming the limit and the key.  A CPU limit is the
    kernel's SIGXCPU, and a disposition ignored where wsuper was launched is
    inherited by every process it starts: the compiler ran on to the hard limit
    (5 s more), killed there by SIGKILL, which said no limit."""
    import signal

    from supervisor import policy, preflight
    if limit.endswith("ignored"):
        before = signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        request.addfinalizer(lambda: signal.signal(signal.SIGXCPU, before))
    if limit == "memory":
        monkeypatch.setattr(zygote, "COMPILE_MEMORY", 64 << 20)
        module, why = _slow_to_compile(200_000), "needed more than 64 MiB of memory"
    else:
        monkeypatch.setattr(zygote, "COMPILE_SECONDS", 1)
        module, why = _slow_to_compile(1_500_000), "took more than 1 s of CPU"
    (tmp_path / "m.wasm").write_bytes(module)
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wasm"\n')
    with pytest.raises(policy.PolicyError) as e:
        preflight.prepare(policy.load(str(tmp_path / "system.toml")))
    assert str(e.value) == (f"{tmp_path}/system.toml:2: compartments.m.module: cannot compile "
                            f"{tmp_path}/m.wasm: compiling it {why} (the compiler's limit)")


def _importing(field: bytes) -> bytes:
    """A valid module that imports a function env.`field` (any bytes: a name)."""
    return (b"\x00asm\x01\x00\x00\x00" + _section(1, b"\x01\x60\x00\x00")
            + _section(2, b"\x01\x03env" + wasmbin._uleb(len(field)) + field + b"\x00\x00"))


def _forgeries(path) -> dict:
    """Import names that carry the compiler's marker (zygote._SAID): one followed by
    the out-of-memory refusal, one placed where the compiler's word is cut (4000
    bytes), so that nothing of its own followed the last marker."""
    prefix = f"module {path} imports env.".encode()
    return {"oom": zygote._SAID + zygote.out_of_memory().encode(),
            "cut": b"x" * (4000 - len(prefix) - len(zygote._SAID)) + zygote._SAID + b"y" * 50,
            "panic": b"\nmemory allocation of 12 bytes failed\n" + zygote._SAID}


@pytest.mark.parametrize("forgery", ["oom", "cut", "panic"])
def test_a_module_cannot_forge_what_its_compiler_says(tmp_path, modules, forgery):
    """The compiler's explanation follows a marker on its pipe, and the text it says
    quotes the module (an import's name, any bytes).  A module importing
    "\0wsuper: compiling it needed more than 4096 MiB ..." was refused as if it had
    run out of memory; one whose name put the marker where the compiler's word is
    cut made it say nothing, so a module at fault (kept failed until it changes)
    was taken for a compiler that died, and compiled again and again."""
    path = tmp_path / "m.wasm"
    path.write_bytes(_importing(_forgeries(path)[forgery]))
    fds, why = modules.get(str(path))
    assert fds is None
    assert why.startswith(f"cannot load module {path}: module {path} imports env."), why
    assert "(the compiler's limit)" not in why.split("\\x00wsuper: ")[0]
    assert zygote._SAID not in why.encode()
    variant = next(iter(modules._failed))
    assert modules._failed[variant][2] is None       # the module's fault: kept until it changes


#: what a child of in_a_compiler may write at most (zygote.ANSWER_MAX)
ANSWER_MAX = getattr(zygote, "ANSWER_MAX", 1 << 20)


def _child_crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def _child_not_json():
    os.write(2, zygote._SAID + b'{"problem": ')
    os._exit(0)


def _child_forges_in_its_error():
    raise ValueError("\0wsuper: " + zygote.out_of_memory())


def _child_says_too_much():
    os.write(2, zygote._SAID + b'["' + b"x" * (ANSWER_MAX + 10) + b'"]')
    os._exit(0)


@pytest.mark.parametrize("work, said", [
    (_child_crash, "its compiler was killed by SIGSEGV"),
    (_child_not_json, "its compiler's answer is not JSON"),
    (_child_forges_in_its_error, "its compiler exited with code 1: ValueError: \\x00wsuper: "),
    (_child_says_too_much, f"its compiler wrote more than {ANSWER_MAX} bytes")])
def test_a_child_of_in_a_compiler_that_ends_badly_is_compiler_failed(work, said):
    """`wsuper check` and `up` compile in a child (zygote.in_a_compiler) that parses
    hostile modules: a child killed by a signal was 'ended with status 11' (a wait
    status), one whose answer was no JSON a traceback out of check and up, one whose
    error quoted the marker and the out-of-memory text a module over the memory
    limit, and what the child wrote was read whole into this process."""
    with pytest.raises(zygote.CompilerFailed) as e:
        zygote.in_a_compiler(work, f"{EXAMPLES}/calc.wat")
    assert str(e.value).startswith(said), str(e.value)
    assert "(the compiler's limit)" not in str(e.value).split("\\x00")[0]


@pytest.mark.parametrize("answer", [
    [], "x", {}, {"problem": None}, {"error": 1},
    {"problem": None, "wasi": False, "dispatch": True, "program": True, "pages": "1" * 100, "tables": []},
    {"problem": None, "wasi": False, "dispatch": True, "program": True, "pages": 1, "tables": [-1]},
    {"problem": None, "wasi": 0, "dispatch": True, "program": True, "pages": 1, "tables": []},
    {"problem": ["x"], "wasi": False, "dispatch": True, "program": True, "pages": 1, "tables": []},
    {"problem": None, "wasi": False, "dispatch": True, "program": True, "pages": 1, "tables": [], "x": 1},
    {"problem": None, "wasi": False, "dispatch": True, "program": 0, "pages": 1, "tables": []}])
def test_wsuper_check_takes_no_answer_of_its_compiler_child_on_trust(
        tmp_path, monkeypatch, answer):
    """The child that compiles a module for `wsuper check` and `up` parses hostile
    wasm, so its answer is hostile input: one of the wrong shape (a list, missing
    keys, a string for a number) is a PolicyError naming the module, never a
    traceback, nor a number of pages made of a string."""
    from supervisor import policy, preflight
    monkeypatch.setattr(preflight, "_module_facts", lambda engine, path: answer)
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    with pytest.raises(policy.PolicyError) as e:
        preflight.prepare(policy.load(str(tmp_path / "system.toml")))
    assert str(e.value).startswith(f"{tmp_path}/system.toml:2: compartments.m.module: cannot "
                                   f"compile {tmp_path}/m.wat: its compiler's answer "), e.value


def test_wsuper_check_refuses_a_module_that_imports_a_name_with_the_compilers_marker(
        tmp_path):
    """The same forgeries through `wsuper check`'s child: the module is refused for
    its import, and the name is shown escaped and at most TEXT_MAX long."""
    from supervisor import policy, preflight
    path = tmp_path / "m.wasm"
    path.write_bytes(_importing(zygote._SAID + zygote.out_of_memory().encode()
                                + b"z" * 90_000))
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wasm"\n')
    with pytest.raises(policy.PolicyError) as e:
        preflight.prepare(policy.load(str(tmp_path / "system.toml")))
    assert str(e.value).startswith(f"{tmp_path}/system.toml:2: compartments.m.module: "
                                   f"{path} imports env.\\x00wsuper: compiling"), e.value
    assert len(str(e.value)) < preflight.TEXT_MAX + 500


def test_the_compilers_limit_never_asks_more_than_the_hard_limit_it_has(modules):
    """The compiler's CPU limit is set below whatever hard limit wsuper runs under:
    asking more than it (COMPILE_SECONDS + 5 under a hard limit of 60 s, say) fails
    without root, and every module failed 'its compiler ended with status 1'.  (As
    root, the child gives up root first: root may raise a hard limit.)"""
    import resource
    import shutil
    import tempfile
    folder = tempfile.mkdtemp()
    try:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "small.wasm")
        with open(path, "wb") as f:
            f.write(_slow_to_compile(10))
        os.chmod(path, 0o644)
        pid = os.fork()
        if pid == 0:                    # a child of its own: the limit stays there
            code = 1
            try:
                resource.setrlimit(resource.RLIMIT_CPU, (60, 60))
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                code = 0 if modules.get(path)[0] is not None else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shutil.rmtree(folder)


def _under_hard_limits(limits: dict, run) -> int:
    """run() in a child of its own under the hard `limits` ({RLIMIT_X: value}),
    unprivileged (root may raise a hard limit); its exit code: 0 if run() is true."""
    import resource
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for which, value in limits.items():
                resource.setrlimit(which, (value, value))
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            code = 0 if run() else 3
        except BaseException:               # noqa: BLE001 - the code says it
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.parametrize("child", ["schema", "wasm-tools", "engine"])
def test_no_child_asks_more_than_a_hard_limit_wsuper_runs_under(child):
    """Each child wsuper bounds (a schema's parse, SCHEMA_SECONDS; the wasm-tools
    child, TOOL_SECONDS and TOOL_MEMORY; an engine, its memory as address space)
    sets its limits below whatever hard limit wsuper runs under (`ulimit -t 50`,
    `ulimit -v`, a service's LimitCPU=): asking more fails without root.  Under a
    CPU hard limit of 50 s, `wsuper up` refused every system with a schema
    ('ValueError: not allowed to raise maximum limit'), as the compiler did
    before 28029c1.  The lower hard limit holds instead."""
    import json
    import resource
    import shutil
    import tempfile

    import capnp_schemas
    from compartments import confine, instrument
    folder = tempfile.mkdtemp()
    try:
        os.chmod(folder, 0o755)
        schema = os.path.join(folder, "limited.capnp")
        # an id of its own: pycapnp refuses one this process has loaded already
        # (examples/calc's, by an earlier test: "Duplicate ID")
        with open(schema, "w") as f:
            f.write(f"@{0x8000000000000000 | int.from_bytes(os.urandom(8), 'little'):#x};\n"
                    "interface Limited { ping @0 () -> (); }\n")
        os.chmod(schema, 0o644)

        def parse():
            line = json.dumps({"schema": schema,
                               "imports": [folder, *capnp_schemas.IMPORT_PATH]})
            answer = zygote._parse_schema(line.encode(), [])
            return answer == {"schema": 0, "stderr": ""} or print(answer)

        def tool():
            instrument._confine_tool("/bin/true")()
            return resource.getrlimit(resource.RLIMIT_CPU) == (50, 50) and \
                resource.getrlimit(resource.RLIMIT_AS) == (instrument.TOOL_MEMORY // 2,) * 2

        def engine():
            confine._limit_resources(instrument.TOOL_MEMORY, 10)
            return resource.getrlimit(resource.RLIMIT_AS) == (instrument.TOOL_MEMORY // 2,) * 2

        runs = {"schema": ({resource.RLIMIT_CPU: 50}, parse),
                "wasm-tools": ({resource.RLIMIT_CPU: 50,
                                resource.RLIMIT_AS: instrument.TOOL_MEMORY // 2}, tool),
                "engine": ({resource.RLIMIT_AS: instrument.TOOL_MEMORY // 2}, engine)}
        limits, run = runs[child]
        assert _under_hard_limits(limits, run) == 0
    finally:
        shutil.rmtree(folder)


def test_a_limit_is_lowered_to_the_hard_limit_in_force_never_raised():
    import resource

    from compartments import confine

    def lowered():
        confine.lower_limit(resource.RLIMIT_CPU, 120, 125)
        first = resource.getrlimit(resource.RLIMIT_CPU)
        confine.lower_limit(resource.RLIMIT_CPU, 20, 25)        # below it: as asked
        return first == (50, 50) and resource.getrlimit(resource.RLIMIT_CPU) == (20, 25)
    assert _under_hard_limits({resource.RLIMIT_CPU: 50}, lowered) == 0


def _held(pid: int) -> set[int]:
    """The inodes of what process `pid` holds open (its sockets and pipes among them)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held.add(os.stat(f"/proc/{pid}/fd/{fd}").st_ino)
        except OSError:
            pass              # closed meanwhile
    return held


def test_a_module_slow_to_compile_holds_up_only_its_own_starts(tmp_path):
    """The zygote compiled one module at a time and waited for it: while a module
    compiled (up to COMPILE_SECONDS of CPU: a file replaced while the system ran,
    a probe switched on, a plugin made to compile slowly), no other compartment
    started or restarted.  Now each request waits for its own module only: the
    requests after it are answered first, each to its own, and a spare forked
    meanwhile holds none of the waiting request's descriptors."""
    import socket

    import trio

    from compartments.spec import EngineSpec
    from supervisor.process import Zygote
    from tests.conftest import EXAMPLES
    user = (65534, 65534) if os.geteuid() == 0 else None
    slow = tmp_path / "slow.wasm"
    slow.write_bytes(_slow_to_compile(400_000))      # a second or two of cranelift
    order, engines, kept = [], {}, []

    async def main():
        zygote_ = Zygote()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(zygote_.run)

            async def spawn(name, module, task_status=trio.TASK_STATUS_IGNORED):
                ours, theirs = socket.socketpair()
                kept.append((name, ours, os.fstat(theirs.fileno()).st_ino))
                try:
                    engines[name] = await zygote_.spawn(
                        EngineSpec(name, module, user=user), theirs.fileno(),
                        task_status.started)
                    order.append(name)
                finally:
                    theirs.close()
            async with trio.open_nursery() as requests:
                await requests.start(spawn, "slow", str(slow))
                await requests.start(spawn, "calc", f"{EXAMPLES}/calc.wat")
                await requests.start(spawn, "slow2", str(slow))
                await requests.start(spawn, "calc2", f"{EXAMPLES}/calc.wat")
            slow_socket = {ino for name, _s, ino in kept if name.startswith("slow")}
            own = {name: ino for name, _s, ino in kept}
            for name in ("calc", "calc2"):
                pid = engines[name].pid
                for _ in range(300):    # once the spare took its request (it may rehearse)
                    held = _held(pid)
                    if own[name] in held:
                        break
                    await trio.sleep(0.05)
                assert own[name] in held and not held & slow_socket, (name, held)
            for proc in engines.values():
                proc.kill()
                await proc.wait()
            zygote_.stop()
            nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        for _name, s, _ino in kept:
            s.close()
    assert sorted(order[:2]) == ["calc", "calc2"] and sorted(order[2:]) == ["slow", "slow2"], \
        order


def test_requests_sent_in_pieces_each_start_their_own_engine(tmp_path):
    """A request longer than half the control socket's send buffer goes to the
    zygote in pieces (the supervisor sends the rest of a line a full buffer cut
    short), its socket and stderr pipe with the first.  The zygote took them for
    the first line that *ended* in the read that brought them: a request in
    pieces had them closed and was refused ("expected 2 descriptors, got 0"), and
    one whose last piece was read with the next request's first took that
    request's socket (its engine served the other compartment's connection).
    Played with a small send buffer and module paths long in JSON; each engine
    must hold its own socket, and no other request's."""
    import socket

    import trio

    from compartments.spec import EngineSpec
    from supervisor.process import Zygote
    from tests.conftest import EXAMPLES
    user = (65534, 65534) if os.geteuid() == 0 else None
    modules_ = []
    for i in range(2):              # non-ASCII: six bytes each in JSON
        d = tmp_path.joinpath(str(i), *["é" * 100] * 10)
        d.mkdir(parents=True)
        (d / "calc.wat").symlink_to(f"{EXAMPLES}/calc.wat")
        modules_.append(str(d / "calc.wat"))
    assert len(EngineSpec("c", modules_[0]).to_json()) > 6000
    results, kept = {}, {}

    async def main():
        zygote_ = Zygote()
        zygote_._raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)   # the least
        async with trio.open_nursery() as nursery:
            nursery.start_soon(zygote_.run)

            async def spawn(name, module):
                ours, theirs = socket.socketpair()
                kept[name] = (ours, os.fstat(theirs.fileno()).st_ino)
                try:
                    results[name] = await zygote_.spawn(EngineSpec(name, module, user=user),
                                                        theirs.fileno())
                except OSError as e:
                    results[name] = e
                finally:
                    theirs.close()
            with trio.fail_after(60):
                async with trio.open_nursery() as requests:
                    for i in range(12):
                        requests.start_soon(spawn, f"c{i}", modules_[i % 2])
            for name, proc in results.items():
                if isinstance(proc, Exception):
                    continue
                for _ in range(300):    # once the spare took its request (it may rehearse)
                    held = _held(proc.pid)
                    results[name] = {n for n, (_s, ino) in kept.items() if ino in held}
                    if results[name]:
                        break
                    await trio.sleep(0.05)
                proc.kill()
                await proc.wait()
            zygote_.stop()
            nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        for s, _ino in kept.values():
            s.close()
    assert results == {f"c{i}": {f"c{i}"} for i in range(12)}, results


def test_the_last_piece_of_a_request_read_with_the_next_one_keeps_its_own_descriptors(
        tmp_path):
    """The kernel hands a request's descriptors over with the read that reaches
    them, and may glue before them the last piece of the request before
    ("...tail\\n2 {...}\\n" with request 2's socket and stderr pipe): the zygote gave
    them to request 1, whose engine then served request 2's connection, and
    request 2 waited without them.  Played exactly: the zygote stopped while the
    pieces are sent, so that its reads are the kernel's."""
    import json
    import signal
    import socket

    from compartments.spec import EngineSpec
    from supervisor.launch import Launched
    from tests.conftest import EXAMPLES
    user = (65534, 65534) if os.geteuid() == 0 else None
    popen, control = Launched().take()
    kept = []
    try:
        control.sendall(b'{"schema": "/nonexistent.capnp", "imports": []}\n')   # it is up
        assert control.recv(1 << 16).endswith(b"\n")
        inodes = {}
        os.kill(popen.pid, signal.SIGSTOP)
        try:
            for ident in (1, 2):
                ours, theirs = socket.socketpair()
                r, w = os.pipe()
                kept += [ours, theirs, r, w]
                inodes[ident] = os.fstat(theirs.fileno()).st_ino
                line = b"%d " % ident + EngineSpec(f"c{ident}", f"{EXAMPLES}/calc.wat",
                                                    user=user).to_json() + b"\n"
                cut = 10 if ident == 1 else len(line)        # request 1 in two pieces
                socket.send_fds(control, [line[:cut]], [theirs.fileno(), w])
                if cut < len(line):
                    control.sendall(line[cut:])
        finally:
            os.kill(popen.pid, signal.SIGCONT)
        control.settimeout(30)
        answers, data = {}, b""
        while len(answers) < 2:
            data += control.recv(1 << 16)
            *lines, data = data.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "id" in msg:
                    answers[msg["id"]] = msg
        for ident, msg in answers.items():
            assert "pid" in msg, msg
            for _ in range(300):        # once the spare took its request (it may rehearse)
                held = set()
                for fd in os.listdir(f"/proc/{msg['pid']}/fd"):
                    try:
                        held.add(os.stat(f"/proc/{msg['pid']}/fd/{fd}").st_ino)
                    except OSError:
                        pass
                if held & set(inodes.values()):
                    break
                time.sleep(0.05)
            assert held & set(inodes.values()) == {inodes[ident]}, (ident, msg)
            os.kill(msg["pid"], signal.SIGKILL)
    finally:
        control.close()
        popen.kill()
        popen.wait()
        for item in kept:
            item.close() if isinstance(item, socket.socket) else os.close(item)


#: A process that compiles in a child (zygote.in_a_compiler) whose work takes long
#: (as a module slow to compile does).
IN_A_COMPILER = r"""
import os, time
from compartments import zygote
from tests.conftest import EXAMPLES
def work():
    time.sleep(600)
zygote.in_a_compiler(work, f"{EXAMPLES}/calc.wat")
"""


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_the_child_of_in_a_compiler_never_outlives_check_or_up(how):
    """`wsuper check` and `up` compile each module in a child that may run for
    COMPILE_SECONDS of CPU with COMPILE_MEMORY: killed, check or up left it running
    on after them (no PR_SET_PDEATHSIG); interrupted (^C reaches check, and a
    compile in wasmtime does not see its own until it is done), check waited for
    it to end.  The child dies with its parent, and an interrupted parent ends it."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parent = subprocess.Popen([sys.executable, "-c", IN_A_COMPILER], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = None
    try:
        deadline = time.monotonic() + 60       # the child (its descriptors are /dev/null)
        while child is None:
            assert time.monotonic() < deadline and parent.poll() is None
            try:
                with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as f:
                    found = f.read().split()
            except OSError:
                found = []
            child = int(found[0]) if found else None
            time.sleep(0.02)
        time.sleep(0.5)                         # in its work: confined, sleeping
        parent.send_signal(how)
        parent.wait(timeout=60)                 # an interrupted parent does not wait
        deadline = time.monotonic() + 20
        while not _ended(child):
            assert time.monotonic() < deadline, "the compiler child outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and not _ended(child):
            os.kill(child, signal.SIGKILL)


def test_the_compilers_memory_limit_heeds_the_control_groups_limit(tmp_path):
    """COMPILE_MEMORY is the host's memory shared by COMPILES + 1 compilers, and the
    host's memory was its RAM only: in a container (or a service with MemoryMax=)
    of 2 GiB on a machine of 64 GiB, each of four compilers could map 4 GiB, and the
    container's OOM killer chose among the supervisor and the engines.  The limit
    of the process's control group (v2 memory.max, v1 memory.limit_in_bytes), or of
    one above it, counts as the host's memory when it is less."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / "wsuper.service").mkdir(parents=True)
    (v2 / "system.slice" / "memory.max").write_text("2147483648\n")
    (v2 / "system.slice" / "wsuper.service" / "memory.max").write_text("max\n")
    (tmp_path / "cgroup2").write_text("0::/system.slice/wsuper.service\n")
    assert zygote._host_memory(str(tmp_path / "cgroup2"), str(v2)) == min(physical, 2 << 30)
    v1 = tmp_path / "v1"
    (v1 / "memory" / "docker" / "abc").mkdir(parents=True)
    (v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(
        str(1536 << 20) + "\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "cgroup1").write_text("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n"
                                      "0::/\n")
    assert zygote._host_memory(str(tmp_path / "cgroup1"), str(v1)) == min(physical,
                                                                            1536 << 20)
    # no control group limit: the RAM
    (tmp_path / "none").write_text("0::/\n")
    assert zygote._host_memory(str(tmp_path / "none"), str(tmp_path / "empty")) == physical
    # shared by the compilers and one more, between 1 GiB and 4 GiB
    assert zygote._compile_memory(8 << 30, 3) == 2 << 30
    assert zygote._compile_memory(2 << 30, 4) == 1 << 30
    assert zygote._compile_memory(64 << 30, 4) == 4 << 30
    assert zygote._compile_memory(0, 4) == 4 << 30


@pytest.mark.parametrize("call", ["fork", "pipe"])
def test_wsuper_check_that_cannot_start_a_compiler_says_so(tmp_path, monkeypatch, call):
    """`wsuper check` and `up` now fork a compiler for each module: a fork refused
    (EAGAIN: the user's process limit; ENOMEM) or no descriptor left for its pipe
    was a traceback out of them, not an error naming the module."""
    import errno

    from supervisor import policy, preflight
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "_start")))')
    (tmp_path / "system.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    system = policy.load(str(tmp_path / "system.toml"))

    def refused(*args):
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    monkeypatch.setattr(os, call, refused)
    with pytest.raises(policy.PolicyError) as e:
        preflight.prepare(system)
    assert str(e.value) == (f"{tmp_path}/system.toml:2: compartments.m.module: cannot compile "
                            f"{tmp_path}/m.wat: cannot start a compiler: "
                            f"{os.strerror(errno.EAGAIN)}")


def _hostile_compiler(how: str, target: str):
    """A zygote._compile_into for module `target` only (the others, the built-in
    warm-up module among them, compile as ever): code running in the compiler child,
    as a memory bug in wasmparser or Cranelift would.  `how`:
      "mapped": compiles, then forks a process that maps its output memfd for
        writing (so that it cannot be sealed), closes everything else, and sleeps;
      "keeps pipe": forks a process that holds its pipe open and sleeps, and exits;
      "sleeps": closes its pipe and sleeps (no CPU: its CPU limit never comes)."""
    import ctypes
    import mmap
    real = zygote._compile_into

    def compile_into(engine, path, fds, err, *args, **kwargs):
        if path != target:
            return real(engine, path, fds, err, *args, **kwargs)
        code = real(engine, path, fds, err, *args, **kwargs) if how == "mapped" else 1
        if how == "sleeps":
            for fd in range(1024):
                if fd not in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            time.sleep(600)
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, LEFT.encode(), 0, 0, 0)     # PR_SET_NAME
            if how == "mapped":
                kept = mmap.mmap(fds[0], 4096, mmap.MAP_SHARED,  # noqa: F841
                                 mmap.PROT_READ | mmap.PROT_WRITE)
                for fd in range(1024):
                    if fd not in fds:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            time.sleep(600)
            os._exit(0)
        if how == "keeps pipe":
            zygote.say(err, f"left {os.getpid()}")
        return code
    return compile_into


def _left_behind() -> set[int]:
    """Live processes that _hostile_compiler forked (named LEFT)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if f"({LEFT})" in stat and stat.rpartition(")")[2].split()[0] != "Z":
            found.add(int(entry))
    return found


LEFT = "wsuper-left"


@pytest.mark.parametrize("how", ["mapped", "keeps pipe", "sleeps"])
def test_a_hostile_compiler_neither_ends_nor_holds_the_zygote_and_leaves_nothing(
        tmp_path, how):
    """What a compiler child runs once a module's bytes took it over: a process it
    forked mapped the output memfd for writing, the zygote's seal failed (EBUSY)
    and the zygote died, and every compartment with it; a process it forked kept
    its pipe open, and the module's compile (and a compile slot) never ended; a
    compiler that closed its pipe and slept held the zygote's loop in waitpid for
    good.  And what it forked outlived everything.  Now a compile ends when its
    compiler does (at COMPILE_WALL at most), with every process it forked (its
    process group, which they cannot leave), and output that cannot be sealed is
    refused.  Checked in a real zygote loop (serve, in a child), with another
    module requested after the hostile one."""
    import socket
    import sys

    from compartments.spec import EngineSpec
    hostile = tmp_path / "hostile.wat"
    hostile.write_text(open(f"{EXAMPLES}/calc.wat").read())
    user = (65534, 65534) if os.geteuid() == 0 else None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = os.getpid()
    before = _left_behind()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            ours.close()
            sys.stderr = open(2, "w", buffering=1, closefd=False)   # not pytest's
            zygote._compile_into = _hostile_compiler(how, str(hostile))
            zygote.COMPILE_WALL = 5
            zygote.serve(theirs, parent)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    kept, answers = [], []
    try:
        for ident, module in enumerate((str(hostile), f"{EXAMPLES}/calc.wat")):
            engine_ours, engine_theirs = socket.socketpair()
            err_r, err_w = os.pipe()
            kept += [engine_ours, err_r]
            line = b"%d " % ident + EngineSpec(f"c{ident}", module, user=user).to_json() + b"\n"
            socket.send_fds(ours, [line], [engine_theirs.fileno(), err_w])
            engine_theirs.close()
            os.close(err_w)
        ours.settimeout(120)            # a bound on a broken test, not a measure
        data = b""
        while len(answers) < 2:
            chunk = ours.recv(1 << 16)
            assert chunk, f"the zygote died; answers {answers}"
            data += chunk
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                msg = json.loads(line)
                if "id" in msg:
                    answers.append(msg)
        by_id = {a["id"]: a for a in answers}
        assert "pid" in by_id[1], by_id                 # the other module: an engine
        said = b""                                      # the hostile one: refused, on
        while how != "mapped":                          # its stderr (zygote._refuse)
            chunk = os.read(kept[1], 4096) if zygote.readable(kept[1], 60) \
                else b""
            said += chunk
            if not chunk:
                break
        # "mapped": its output sealed once what mapped it was dead, or refused (EBUSY)
        assert how == "mapped" or b"cannot load module " + str(hostile).encode() in said, \
            (by_id, said)
        if how == "sleeps":
            assert b"took more than 5 s" in said, said
        os.kill(pid, 0)                                 # the zygote lives on
        deadline = time.monotonic() + 30                # SIGKILL lands: no timing asserted
        while _left_behind() - before:
            assert time.monotonic() < deadline, "a process the compiler forked lives on"
            time.sleep(0.1)
    finally:
        ours.close()
        for item in kept:
            item.close() if hasattr(item, "close") else os.close(item)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for left in _left_behind() - before:
            os.kill(left, signal.SIGKILL)


@pytest.mark.parametrize("how", ["keeps pipe", "sleeps"])
def test_wsuper_checks_compiler_child_cannot_hold_it_nor_leave_a_process(monkeypatch, how):
    """`wsuper check` and `up` (zygote.in_a_compiler) read their compiler child's pipe
    to its end: a process the child forked held it open, or the child slept (no
    CPU, so its CPU limit never came), and check and up waited for good, and what
    it forked lived on after them.  Now the answer is the child's when it ends
    (COMPILE_WALL at most, CompilerFailed saying so), and every process it forked
    ends with it."""
    import ctypes

    def work():
        if how == "sleeps":
            time.sleep(600)
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, LEFT.encode(), 0, 0, 0)     # PR_SET_NAME
            time.sleep(600)
            os._exit(0)
        return {"answer": 42}

    def stuck(*_):
        raise TimeoutError("in_a_compiler still waits")
    monkeypatch.setattr(zygote, "COMPILE_WALL", 5, raising=False)
    before = _left_behind()
    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(90)                    # a bound on a broken test, not a measure
    try:
        if how == "sleeps":
            with pytest.raises(zygote.CompilerFailed, match="took more than 5 s"):
                zygote.in_a_compiler(work, f"{EXAMPLES}/calc.wat")
        else:
            assert zygote.in_a_compiler(work, f"{EXAMPLES}/calc.wat") == {"answer": 42}
        deadline = time.monotonic() + 30                # SIGKILL lands: no timing asserted
        while _left_behind() - before:
            assert time.monotonic() < deadline, "a process the compiler forked lives on"
            time.sleep(0.1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        for left in _left_behind() - before:
            os.kill(left, signal.SIGKILL)


def _our_children_named(name: str) -> set[int]:
    """This process's children (zombies too) named `name`."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if f"({name})" in stat and int(stat.rpartition(")")[2].split()[2]) == os.getpid():
            found.add(int(entry))
    return found


def test_a_compiler_child_cannot_make_its_callers_child():
    """clone(CLONE_PARENT) in in_a_compiler's child (as a memory bug in the parser
    could) made a process that was the caller's child (`wsuper up`'s supervisor):
    collect ended it with the group, but nothing there reaped it, a zombie of the
    engines' uid for good, as many as a compile could fork.  Refused now (EPERM,
    the helpers' seccomp filter); nothing of the compile is this process's child."""
    import ctypes

    name = "wsuper-cparent"

    def work():
        libc = ctypes.CDLL(None, use_errno=True)
        made = []
        for _ in range(3):
            pid = libc.syscall(56, 0x00008000 | 17, 0, 0, 0, 0)    # CLONE_PARENT|SIGCHLD
            if pid == 0:
                libc.prctl(15, name.encode(), 0, 0, 0)                 # PR_SET_NAME
                time.sleep(600)
                os._exit(0)
            made.append((pid, ctypes.get_errno()))
        return made

    def stuck(*_):
        raise TimeoutError("in_a_compiler still waits")
    before = _our_children_named(name)
    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(90)                    # a bound on a broken test, not a measure
    try:
        made = zygote.in_a_compiler(work, f"{EXAMPLES}/calc.wat")
        assert made and all(pid == -1 and errno == 1 for pid, errno in made), made
        assert _our_children_named(name) - before == set()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        for left in _our_children_named(name) - before:
            os.kill(left, signal.SIGKILL)
            os.waitpid(left, 0)


def test_wsuper_check_that_cannot_wait_for_its_compiler_says_so_and_leaves_none(
        monkeypatch):
    """in_a_compiler waits for its child through a pidfd (collect): with no descriptor
    left for it, the answer is CompilerFailed, and the child is ended, not left."""
    import errno
    children = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            children.append(pid)
        return pid

    def refused(*args):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(os, "pidfd_open", refused)
    with pytest.raises(zygote.CompilerFailed, match="cannot wait for its compiler: "
                       + os.strerror(errno.EMFILE)):
        zygote.in_a_compiler(lambda: time.sleep(600), f"{EXAMPLES}/calc.wat")
    assert len(children) == 1
    with pytest.raises(ChildProcessError):          # reaped already
        os.waitpid(children[0], os.WNOHANG)


def test_the_schema_parsers_child_cannot_hold_the_zygote_nor_leave_a_process(monkeypatch):
    """The zygote read its schema parser's pipe to its end: a process the parser's
    child forked (as a memory bug in the parser could) held it open, the zygote
    waited for good, and that process (uid 0 if the zygote is root) lived on.  Now
    the answer is the child's when it ends, and what it forked ends with it."""
    import capnp_schemas
    monkeypatch.setattr(capnp_schemas, "PARSE_AFTER", f"""if True:
    import ctypes, os, time
    def parse(path, imports, before):
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, {LEFT!r}.encode(), 0, 0, 0)
            time.sleep(600)
            os._exit(0)
        os._exit(3)
""")

    def stuck(*_):
        raise TimeoutError("the zygote still waits for the schema's parser")
    before = _left_behind()
    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(90)                    # a bound on a broken test, not a measure
    try:
        schema = f"{EXAMPLES}/calc.capnp"
        line = json.dumps({"schema": schema, "imports": [os.path.dirname(schema)]})
        assert zygote._parse_schema(line.encode(), [])["schema"] == 3
        deadline = time.monotonic() + 30                # SIGKILL lands: no timing asserted
        while _left_behind() - before:
            assert time.monotonic() < deadline, "a process the parser forked lives on"
            time.sleep(0.1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        for left in _left_behind() - before:
            os.kill(left, signal.SIGKILL)


def test_a_compile_that_ended_before_its_wall_clock_limit_is_never_taken_as_too_long(
        tmp_path):
    """The zygote's loop judged a compiler past COMPILE_WALL before it reaped what had
    ended: a compile that was done well in time, but whose end the loop saw only
    after its deadline (the zygote busy meanwhile: a schema's parse, spares), was
    refused as "took more than COMPILE_WALL s", and the module with it, for ten
    times that.  Now a compiler that ended is never ended as too long: its own end
    is its answer.  Checked in a real zygote loop (serve, in a child), busy with a
    slow schema parse while the module compiles."""
    import socket
    import sys

    import capnp_schemas
    from compartments.spec import EngineSpec
    module = tmp_path / "m.wat"
    module.write_text(open(f"{EXAMPLES}/calc.wat").read())
    user = (65534, 65534) if os.geteuid() == 0 else None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            ours.close()
            sys.stderr = open(2, "w", buffering=1, closefd=False)   # not pytest's
            zygote.COMPILE_WALL = 6
            capnp_schemas.PARSE_AFTER = """if True:
    import time
    def parse(path, imports, before):
        time.sleep(15)
"""
            zygote.serve(theirs, parent)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    engine_ours, engine_theirs = socket.socketpair()
    err_r, err_w = os.pipe()
    try:
        schema = f"{EXAMPLES}/calc.capnp"
        line = b"0 " + EngineSpec("c0", str(module), user=user).to_json() + b"\n"
        socket.send_fds(ours, [line], [engine_theirs.fileno(), err_w])
        ours.sendall(json.dumps({"schema": schema, "imports": [os.path.dirname(schema)]}
                                ).encode() + b"\n")
        engine_theirs.close()
        os.close(err_w)
        ours.settimeout(120)            # a bound on a broken test, not a measure
        data, answers = b"", []
        while not any("id" in a for a in answers):
            chunk = ours.recv(1 << 16)
            assert chunk, f"the zygote died; answers {answers}"
            data += chunk
            while b"\n" in data:
                one, data = data.split(b"\n", 1)
                answers.append(json.loads(one))
        assert any("schema" in a for a in answers), answers              # it was busy
        started = [a for a in answers if "id" in a][0]
        assert "pid" in started, started
        os.kill(started["pid"], signal.SIGKILL)         # what it said, to its end
        said = b""
        while chunk := (os.read(err_r, 4096) if zygote.readable(err_r, 60)
                        else b""):
            said += chunk
        assert b"took more than" not in said and b"cannot load module" not in said, said
    finally:
        ours.close()
        engine_ours.close()
        os.close(err_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_collect_takes_a_child_that_ended_by_its_deadline_as_ended_not_too_long():
    """collect judged "time" by the clock alone: a child that had ended, its answer on
    the pipe, seen only at its deadline (this process busy), was no answer.  Its
    own end is its answer (a deadline of 0 s, after it ended)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"done")
        os._exit(7)
    os.close(w)
    zygote.joined(pid)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)      # it ended (not reaped)
    status, text, why = zygote.collect(pid, r, 0, 1 << 10)
    assert (why, os.waitstatus_to_exitcode(status), text) == (None, 7, b"done")


@pytest.mark.parametrize("how", ["supervisor gone", "its stop", "supervisor killed",
                                 "its stop in a schema's parse"])
def test_what_a_compiler_forked_ends_with_the_zygote(tmp_path, monkeypatch, how):
    """A compiler dies with the zygote (PR_SET_PDEATHSIG), but a process it forked
    does not (the setting is not inherited): `wsuper up` ended (its zygote's socket
    closed, then its stop signal), or killed, while a module's compile ran, and what
    the module's code had forked lived on after the whole system (uid 0 for the
    schema parser's child).  Now the zygote ends every compiler's group (and the
    schema parser's) as it ends, and its supervisor's death is its stop signal
    (zygote.STOP: SIGTERM, which it ignores, is no longer the supervisor's).
    Checked in a real zygote loop (serve) under a process playing the supervisor."""
    import ctypes
    import socket
    import sys

    import capnp_schemas
    from compartments.spec import EngineSpec
    hostile = tmp_path / "hostile.wat"
    hostile.write_text(open(f"{EXAMPLES}/calc.wat").read())
    monkeypatch.setattr(capnp_schemas, "PARSE_AFTER", f"""if True:
    import ctypes, os, time
    def parse(path, imports, before):
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, {LEFT!r}.encode(), 0, 0, 0)
            time.sleep(600)
            os._exit(0)
        time.sleep(600)
""")

    real = zygote._compile_into

    def compile_into(engine, path, fds, err, *args, **kwargs):
        if path != str(hostile):        # the zygote's own warm-up module
            return real(engine, path, fds, err, *args, **kwargs)
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, LEFT.encode(), 0, 0, 0)     # PR_SET_NAME
            time.sleep(600)
            os._exit(0)
        time.sleep(600)
        return 1
    user = (65534, 65534) if os.geteuid() == 0 else None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    told_r, told_w = os.pipe()
    before = _left_behind()
    supervisor = os.fork()
    if supervisor == 0:                 # plays the supervisor: the zygote's parent
        code = 70
        try:
            ours.close()
            os.close(told_r)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                sys.stderr = open(2, "w", buffering=1, closefd=False)   # not pytest's
                zygote._compile_into = compile_into
                zygote.serve(theirs, me)
                os._exit(0)
            theirs.close()
            os.write(told_w, b"%d\n" % pid)
            os.waitpid(pid, 0)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    os.close(told_w)
    kept = []
    try:
        with os.fdopen(told_r) as told:
            zygote_pid = int(told.readline())
        if how.endswith("schema's parse"):
            schema = f"{EXAMPLES}/calc.capnp"
            ours.sendall(json.dumps({"schema": schema, "imports": [os.path.dirname(schema)]})
                         .encode() + b"\n")
        else:
            engine_ours, engine_theirs = socket.socketpair()
            err_r, err_w = os.pipe()
            kept += [engine_ours, err_r]
            line = b"1 " + EngineSpec("c1", str(hostile), user=user).to_json() + b"\n"
            socket.send_fds(ours, [line], [engine_theirs.fileno(), err_w])
            engine_theirs.close()
            os.close(err_w)
        deadline = time.monotonic() + 60        # a bound on a broken test, not a measure
        while not _left_behind() - before:      # the compile (or parse) has forked
            assert time.monotonic() < deadline, "the hostile compiler never forked"
            time.sleep(0.1)
        if how == "supervisor gone":
            ours.close()
        elif how == "supervisor killed":
            os.kill(supervisor, signal.SIGKILL)
        else:
            os.kill(zygote_pid, zygote.STOP)
        deadline = time.monotonic() + 30                # SIGKILL lands: no timing asserted
        while _left_behind() - before:
            assert time.monotonic() < deadline, "a process the compiler forked lives on"
            time.sleep(0.1)
    finally:
        ours.close()
        for item in kept:
            item.close() if hasattr(item, "close") else os.close(item)
        for pid in (supervisor, zygote_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (OSError, NameError):
                pass
        os.waitpid(supervisor, 0)
        for left in _left_behind() - before:
            os.kill(left, signal.SIGKILL)


@pytest.mark.parametrize("refused", [("memfd_create", 1), ("memfd_create", 2), ("pipe", 1),
                                     ("fork", 1)])
def test_a_compile_that_cannot_start_leaves_no_descriptor(tmp_path, modules, monkeypatch,
                                                          refused):
    """A compile that could not start (no descriptor, memory or process left) is the
    requests' error (serve's start_compiles); the descriptors made for it before
    the call that failed must be closed: the second memfd refused (EMFILE) left
    the first open in the zygote, one more at each start tried, on a zygote out
    of descriptors already."""
    path = tmp_path / "m.wat"
    path.write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    call, nth = refused
    real, calls = getattr(os, call), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == nth:
            raise OSError(24, "Too many open files")
        return real(*args, **kwargs)
    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, call, failing)
    with pytest.raises(OSError):
        modules.start(("test", 1), (str(path), (), None, 0))
    monkeypatch.undo()
    assert set(os.listdir("/proc/self/fd")) <= before
    assert not modules.compiling


@pytest.mark.parametrize("change", ["symbolic link", "renamed over", "written in place"])
@pytest.mark.parametrize("compile_", ["beside the loop", "waited for"])
def test_a_module_file_changed_before_its_compiler_read_it_is_never_another_files_code(
        tmp_path, modules, change, compile_):
    """The cache knew a compile by the file's key looked up at the request (wasm.file_key),
    but the compiler read the path later (a compile waits for a slot, for
    minutes): a symbolic link pointed at another module meanwhile (a deployment's
    `current`) had that module's code kept as the first one's, and pointed back
    (a rollback), the first module's compartment ran the other's code for good.
    Now a compiler that reads another file than the one looked up fails (not
    the module's fault: compiled again once it changes), and what it made is
    never kept under the first file's key."""
    a, b = tmp_path / "a.wat", tmp_path / "b.wat"
    a.write_text('(module (memory (export "memory") 1) (func (export "_start")) '
                 '(func (export "aaa")))')
    b.write_text('(module (memory (export "memory") 1) (func (export "_start")) '
                 '(func (export "bbb")))')
    path = tmp_path / "m.wat"
    if change == "symbolic link":
        path.symlink_to(a)
    else:
        path.write_bytes(a.read_bytes())

    def point(to):
        if change == "symbolic link":
            (tmp_path / "new").symlink_to(to)
            os.rename(tmp_path / "new", path)
        elif change == "renamed over":
            (tmp_path / "new").write_bytes(to.read_bytes())
            os.rename(tmp_path / "new", path)
        else:
            with open(path, "r+b") as f:
                f.write(to.read_bytes())

    def exports(fds):           # as the compiled form names them
        text = os.pread(fds[0], 1 << 24, 0)
        return [name for name in ("aaa", "bbb") if name.encode() in text]
    _fds, _why, want = modules.lookup(str(path))
    assert want is not None
    if compile_ == "beside the loop":
        point(b)
        job = modules.start(want, (str(path), (), None, 0))
        fds, why = modules.settle(want, job.began, *job.wait())
        modules.compiling.pop(job.want, None)
    else:
        compile_real = modules._compile

        def changed_first(*args, **kwargs):
            point(b)
            return compile_real(*args, **kwargs)
        modules._compile = changed_first
        fds, why = modules.get(str(path))
        modules._compile = compile_real
    assert fds is None and "changed while it was being compiled" in why, (fds, why)
    if change == "symbolic link":           # rolled back: the first module, or nothing
        point(a)
        fds, why = modules.get(str(path))
        assert fds is None or exports(fds) == ["aaa"], exports(fds)
    point(b)                                # changed again: compiled, the new module
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    fds, why = modules.get(str(path))
    assert fds is not None and exports(fds) == ["bbb"], why


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_what_in_a_compilers_child_forked_ends_when_its_caller_is_stopped(sig):
    """`wsuper check` stopped (SIGTERM, SIGHUP: their default ends the process at
    once) while its compiler child ran: the child died with it (PR_SET_PDEATHSIG),
    but a process the child forked did not, and lived on after check.  Now such
    a signal ends the child's group first, and then the caller, by that signal;
    the caller's handlers are its own again after (checked in a child of this
    test playing `wsuper check`)."""
    import ctypes
    before = _left_behind()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)

            def work():
                if os.fork() == 0:
                    ctypes.CDLL(None).prctl(15, LEFT.encode(), 0, 0, 0)     # PR_SET_NAME
                    time.sleep(600)
                    os._exit(0)
                time.sleep(600)
            zygote.in_a_compiler(work, f"{EXAMPLES}/calc.wat")
        except KeyboardInterrupt:
            code = 0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and \
                signal.getsignal(signal.SIGHUP) == signal.SIG_DFL else 71
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 60        # a bound on a broken test, not a measure
        while not _left_behind() - before:      # the child has forked
            assert time.monotonic() < deadline, "the compiler child never forked"
            time.sleep(0.1)
        os.kill(pid, sig)
        _, status = os.waitpid(pid, 0)
        if sig == signal.SIGINT:                # KeyboardInterrupt, handlers restored
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        else:                                   # ended by that signal, as before
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig, status
        deadline = time.monotonic() + 30                # SIGKILL lands: no timing asserted
        while _left_behind() - before:
            assert time.monotonic() < deadline, "a process the compiler child forked lives on"
            time.sleep(0.1)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass
        for left in _left_behind() - before:
            os.kill(left, signal.SIGKILL)


@pytest.mark.parametrize("limits", ["the compiler's", "none"])
def test_a_compilers_output_is_never_kept_bigger_than_its_memory_limit(
        modules, monkeypatch, limits):
    """A compiler's memory is bounded (RLIMIT_AS, COMPILE_MEMORY), but what it writes
    to its output memfds is not its address space: one taken over by its module
    wrote 600 MiB under a 256 MiB limit, which the zygote kept sealed for good and
    every engine of that module read whole.  Now a compiler may write
    COMPILE_MEMORY at most (RLIMIT_FSIZE), and the zygote never keeps more than
    that in all (both were in the compiler's memory at once), whatever limits
    the compiler ran under ("none": limit_compiler skipped)."""
    monkeypatch.setattr(zygote, "COMPILE_MEMORY", 64 << 20)
    real = zygote._compile_into

    def hostile(engine, path, fds, err, *args, **kwargs):
        code = real(engine, path, fds, err, *args, **kwargs)
        chunk = b"\0" * (1 << 20)
        try:
            for _ in range(65):
                os.write(fds[1], chunk)
        except OSError:
            pass                        # what it wrote stays written
        return code
    monkeypatch.setattr(zygote, "_compile_into", hostile)
    if limits == "none":
        monkeypatch.setattr(zygote, "limit_compiler", lambda confining, stderr: None)
    fds, why = modules.get(f"{EXAMPLES}/calc.wat")
    assert fds is None, [os.fstat(fd).st_size for fd in fds]
    assert why.endswith("its compiled form is more than 64 MiB (the compiler's limit)"), why
    assert not modules.descriptors()


def test_a_compiled_form_past_the_compilers_limit_says_so():
    """The compiler's own output past RLIMIT_FSIZE (COMPILE_MEMORY, or a lower hard
    limit wsuper runs under: `ulimit -f`) is its limit, said as such and kept until
    the file changes, as its other limits; not "exited with code 1", tried again
    and again.  (In a child of this test, under a hard limit of 16 KiB.)"""
    import resource
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
            m = zygote._Modules(wasmtime.Engine(wasm.engine_config()))
            first = m.get(f"{EXAMPLES}/calc.wat")
            kept = m.get(f"{EXAMPLES}/calc.wat") == first
            os.write(w, json.dumps([first[1], kept]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        why, kept = json.loads(f.read())
    os.waitpid(pid, 0)
    # the limit named is the one wsuper runs under (an outside review: "the compiler's
    # limit" sent the operator of `ulimit -f` looking for a module too large)
    assert why.endswith("its compiled form is more than 16384 bytes (the file size limit "
                        "wsuper runs under: ulimit -f)"), why
    assert kept


def test_the_zygote_ends_quietly_when_the_supervisor_goes_with_its_answers_unread(tmp_path):
    """The supervisor gone (killed) with the zygote's answers unread in its socket:
    the zygote's next read failed with ECONNRESET (not an end of file), a traceback
    on the terminal `wsuper up` ran in, exit 1.  Now it is its end, as an end of
    file is (and what its compilers forked ends with it: serve)."""
    import socket
    import sys

    from compartments.spec import EngineSpec
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    err = tmp_path / "zygote.err"
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            ours.close()
            fd = os.open(err, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", buffering=1, closefd=False)   # not pytest's
            zygote.serve(theirs, parent)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    try:
        for ident in range(3):              # answered, never read
            engine_ours, engine_theirs = socket.socketpair()
            err_r, err_w = os.pipe()
            line = b"%d " % ident + EngineSpec(f"c{ident}", f"{EXAMPLES}/calc.wat").to_json()
            socket.send_fds(ours, [line + b"\n"], [engine_theirs.fileno(), err_w])
            for item in (engine_ours, engine_theirs):
                item.close()
            for fd in (err_r, err_w):
                os.close(fd)
        ours.settimeout(60)                 # a bound on a broken test, not a measure
        assert ours.recv(1, socket.MSG_PEEK)        # an answer waits, unread
        ours.close()
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            pass
    assert "Traceback" not in err.read_text(), err.read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_the_zygotes_end_never_signals_a_child_that_took_a_reaped_compilers_number(
        modules, monkeypatch):
    """A compiler reaped by the zygote's loop stays in `compiling` until its end is
    settled, and settling another compile first forks (the spares that take the
    requests that waited for it): a new child may get the reaped compiler's
    number.  The zygote's end (_end_groups, at its STOP) checked each number with
    waitid, which a live child of the zygote passes whoever it is: it SIGKILLed
    that child (an engine) and its group.  Only compilers not reaped are ended."""
    import subprocess
    child = subprocess.Popen(["sleep", "60"])    # the new child with the old number
    try:
        reaped = zygote._Compile(("reaped",), ("m.wasm", (), None, 0), (), child.pid, -1)
        reaped.status = 0                        # the loop reaped the compiler
        modules.compiling[reaped.want] = reaped
        monkeypatch.setattr(zygote, "_compilers", modules.running)
        assert modules.running() == []
        zygote._end_groups()
        assert child.poll() is None, "a child not a compiler was killed"
        reaped.status = None                     # not reaped: its number is its own
        assert modules.running() == [child.pid]
        zygote._end_groups()
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        modules.compiling.clear()
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.mark.parametrize("touch", ["chmod", "hard link made", "times set as they were"])
def test_a_module_file_touched_while_its_compile_waits_still_starts(tmp_path, touch):
    """The compiler refuses to read a file other than the one its request looked up
    (wasm.preload: its key holds the change time), and a compile may wait for a
    slot.  A file not changed but touched meanwhile (a chmod, a hard link made by a
    backup or a deployment, its times set as they were) failed its start: "the
    module file changed while it was being compiled", a compartment with restart
    "never" never ran.  A compile that fails for a file that is not the one looked
    up any more is done again for the file as it is now, for the requests that
    waited for it (zygote.RECOMPILES times at most)."""
    import socket

    import trio

    from compartments.spec import EngineSpec
    from supervisor.process import Zygote
    user = (65534, 65534) if os.geteuid() == 0 else None
    slow = []
    for i in range(zygote.COMPILES):            # every compile slot busy for a while
        path = tmp_path / f"slow{i}.wasm"
        path.write_bytes(_slow_to_compile(150_000 + i))
        slow.append(str(path))
    module = tmp_path / "m.wat"
    module.write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    os.chmod(module, 0o644)
    kept, answers, said = {}, {}, {}

    def touched():
        if touch == "chmod":
            os.chmod(module, 0o664)
        elif touch == "hard link made":
            os.link(module, tmp_path / "m.bak")
        else:
            st = os.stat(module)
            os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))

    async def main():
        zygote_ = Zygote()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(zygote_.run)

            async def spawn(name, path, task_status=trio.TASK_STATUS_IGNORED):
                ours, theirs = socket.socketpair()
                kept[name] = ours
                try:
                    answers[name] = await zygote_.spawn(
                        EngineSpec(name, path, user=user), theirs.fileno(),
                        task_status.started)
                finally:
                    theirs.close()
            with trio.fail_after(120):
                async with trio.open_nursery() as requests:
                    for i, path in enumerate(slow):
                        await requests.start(spawn, f"slow{i}", path)
                    await requests.start(spawn, "m", str(module))
                    # answered at once, after the zygote looked "m" up (a line at a time)
                    await requests.start(spawn, "gone", str(tmp_path / "gone.wasm"))
                    while "gone" not in answers:
                        await trio.sleep(0.01)
                    touched()
                # an engine ends when its socket does; one refused says why first
                kept.pop("m").close()
                text = b""
                while chunk := await answers["m"].stderr.receive_some(1 << 16):
                    text += chunk
                said["m"] = (await answers["m"].wait(), text.decode())
            for proc in answers.values():
                proc.kill()
                await proc.wait()
            zygote_.stop()
            nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        for s in kept.values():
            s.close()
    from compartments import engine
    code, text = said["m"]
    assert code != engine.EXIT_CANNOT_LOAD and "cannot load" not in text, said["m"]


def test_a_start_waiting_for_a_long_compile_is_not_taken_for_a_stalled_zygote(
        tmp_path, monkeypatch):
    """A start's wait for the zygote's answer is bounded by the zygote's silence
    (process.ANSWER_SILENCE): a compile may take up to COMPILE_WALL, so the zygote
    says {"busy": N} every BUSY_EVERY while requests wait for compiles.  Checked
    with a real zygote loop (serve, in a child) whose compile of one module sleeps
    (COMPILE_WALL 4 s, silence 1.5 s, busy every 0.3 s): the start waits the whole
    compile, hears the zygote busy, and gets the zygote's own answer (a child that
    says its compile failed), not Stalled."""
    import socket
    import sys

    import trio

    from compartments.limits import Limits
    from compartments.spec import EngineSpec
    from supervisor import process
    hostile = tmp_path / "hostile.wat"
    hostile.write_text(open(f"{EXAMPLES}/calc.wat").read())
    user = (65534, 65534) if os.geteuid() == 0 else None
    monkeypatch.setattr(process, "ANSWER_SILENCE", 1.5)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            ours.close()
            sys.stderr = open(2, "w", buffering=1, closefd=False)   # not pytest's
            zygote._compile_into = _hostile_compiler("sleeps", str(hostile))
            zygote.COMPILE_WALL = 4
            # busy said every 0.3 s against a silence of 1.5 s: said every 1 s (as
            # the product does), a zygote this test's machine held back 0.5 s
            # (CI beside other suites) was taken for stalled
            zygote.BUSY_EVERY = 0.3
            zygote.serve(theirs, parent)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    z = object.__new__(process.Zygote)
    # the forked zygote is ended here (below), not by run's end
    z._popen = type("P", (), {"pid": pid, "poll": lambda self: 0, "wait": lambda self: 0,
                              "returncode": 0})()
    z.pid, z._raw, z._sock = pid, ours, None
    z._waiting, z._engines, z._early, z._answered, z._abandoned = {}, {}, {}, set(), set()
    z._ids, z._lock, z.alive, z.heard = iter(range(1, 100)), None, True, float("-inf")
    busy = []
    real_message = process.Zygote._message

    def message(self, line):
        msg = real_message(self, line)
        if msg is not None and "busy" in msg:
            busy.append(msg["busy"])
        return msg
    monkeypatch.setattr(process.Zygote, "_message", message)
    got = []

    async def main():
        ours.setblocking(False)
        z._sock = trio.socket.from_stdlib_socket(ours)
        z._lock = trio.Lock()
        with trio.fail_after(60):                # a bound on a broken test, not a measure
            async with trio.open_nursery() as nursery:
                nursery.start_soon(z.run)
                a, b = socket.socketpair()
                with a, b:
                    try:       # its answer: a child that says the compile failed
                        engine = await z.spawn(EngineSpec("c", str(hostile), user=user,
                                                          limits=Limits(start_time=0.1)),
                                               b.fileno())
                        engine.kill()
                        got.append(engine)
                    except OSError as e:
                        got.append(e)
                nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        ours.close()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert len(got) == 1 and isinstance(got[0], process.ForkedEngine), got
    assert busy and set(busy) == {1}, busy


# ---------------------------------------------------------------- compiled soon (r248)

def _opens(path: str):
    """(inotify descriptor, read()): read() waits up to `wait` seconds for events and
    returns how many times `path` was opened meanwhile (IN_OPEN)."""
    import ctypes
    import select
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
    assert fd >= 0 and libc.inotify_add_watch(fd, path.encode(), 0x20) >= 0   # IN_OPEN

    poller = select.poll()      # not select(): this test process may hold past 1,023
    poller.register(fd, select.POLLIN)

    def read(wait: float = 0.0) -> int:
        n = 0
        while poller.poll(wait * 1000):
            data = os.read(fd, 4096)
            while data:
                _wd, mask, _cookie, size = struct.unpack_from("iIII", data)
                n += bool(mask & 0x20)
                data = data[16 + size:]
            wait = 0.2                    # the rest of what came with it
        return n
    return fd, read


def _system(tmp_path, names=("c1", "c2")):
    from supervisor import policy
    module = tmp_path / "calc.wat"
    module.write_bytes(open(f"{EXAMPLES}/calc.wat", "rb").read())
    toml = tmp_path / "system.toml"
    toml.write_text(f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\n' + "".join(
        f'[compartments.{n}]\nmodule = "calc.wat"\nexports = "Calc"\n' for n in names))
    return policy.load(str(toml)), str(module)


def test_up_has_the_zygote_compile_each_module_before_its_first_start_and_once(tmp_path):
    """`wsuper up` compiled each module twice on the way to its first ready: in
    preflight's checking child, and then in the zygote's compiler at the first
    start, after the checks (17-40 ms more before the first `ready`).  The zygote
    is now asked to compile every module as soon as the policy names them
    (Launched.compile_soon): its compiler reads the module file before any engine
    is asked for, and the engines of it (two compartments, one module) start from
    that one compile: the file is opened once in all."""
    import socket

    import trio

    from compartments.spec import EngineSpec
    from supervisor.launch import Launched
    from supervisor.process import Zygote
    system, module = _system(tmp_path)
    watch, opens = _opens(module)
    launched = Launched()
    try:
        launched.compile_soon(system)
        first = opens(60)           # the zygote imports first (~0.2 s, more when loaded)
        assert first == 1, "the zygote did not read the module before any start"
        engines, kept = [], []

        async def main():
            zygote_ = Zygote(launched)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote_.run)
                for comp in system.compartments.values():     # as runtime._spawn asks
                    ours, theirs = socket.socketpair()
                    kept.append(ours)
                    try:
                        engines.append(await zygote_.spawn(EngineSpec(
                            comp.name, comp.module, exports=True, limits=comp.limits,
                            user=system.engine_user, instrument=comp.instrument,
                            protect=comp.protect), theirs.fileno()))
                    finally:
                        theirs.close()
                for proc in engines:
                    proc.kill()
                    await proc.wait()
                zygote_.stop()
                nursery.cancel_scope.cancel()
        trio.run(main)
        assert len(engines) == 2 and all(p.pid > 0 for p in engines)
        assert opens(0.5) == 0, "the module was compiled again at its first start"
    finally:
        launched.discard()
        os.close(watch)
        for s in locals().get("kept", ()):
            s.close()


@pytest.mark.parametrize("line", [
    b'{"compile": 5}',
    b'{"compile": {"name": "c"}}',
    b'{"compile": {"name": "c", "module": "relative.wat"}}',
    b'{"compile": {"name": "c", "module": "/no/such/module.wat"}}',
    b'{"compile": {"name": "c", "module": "/"}}',
    b'{"compile": {"name": "c", "module": "/dev/zero"}}',
    b'{"compile": {"name": "c", "module": "/x", "limits": {"memory": -1}}}',
    b'{"compile": {}, "more": 1}',
    b'{"compile": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}',
    b'{"compile": ' + b'[' * 100_000 + b']' * 100_000 + b'}',
    b'{"compile": \xff\xfe}',
])
def test_a_bad_compile_request_is_neither_answered_nor_held_against_the_next(tmp_path, line):
    """A compile request ({"compile": SPEC}) is a hint: one the zygote cannot take (not
    JSON, no spec, a spec refused, a module that is not there or no file) changes
    nothing and is not answered, so the next line the supervisor reads is the answer
    to what it asked next (a schema's parse here).  Before, any such line was an
    engine request without a number, answered with an error the schema's parse took
    for its own answer (the zygote then discarded)."""
    from supervisor.launch import Launched
    launched = Launched()
    try:
        launched.sock.sendall(line + b"\n")
        answer = launched.parse_schema(f"{EXAMPLES}/calc.capnp", [])
        assert answer is not None and answer[0] == 0, answer
        assert launched.popen.poll() is None        # the zygote goes on
    finally:
        launched.discard()
