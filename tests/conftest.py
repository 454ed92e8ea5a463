import atexit
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from compartments.zygote import readable
from supervisor.output import strip_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "calc")


def _descriptors_as_the_supervisor_has_them():
    """The soft RLIMIT_NOFILE raised to the hard one, as `wsuper up` raises its own
    (launch.py): root's soft limit here is often many thousands, an ordinary user's
    1,024, and run by one the unit tests failed by the hundred, EMFILE, once the
    descriptors of the grants earlier tests left open (and a test's own 2,000
    socket pairs) had passed it (a review as an ordinary user, reviewer 178)."""
    from supervisor.launch import raise_fd_limit
    raise_fd_limit()


_descriptors_as_the_supervisor_has_them()


def _stop_signals_reach_the_systems_tests_start():
    """SIGINT and SIGHUP delivered, not ignored, to the `wsuper up`s the tests start.
    The suite run as a background job of a script (`pytest ... &` without job
    control, as a CI step may) starts with SIGINT ignored, under `nohup` with
    SIGHUP ignored; every child inherits that, and `up` keeps a signal ignored when
    it began (nohup's SIGHUP, as its user asked): 18 tests that stop a system with
    SIGINT found it running on and failed (r262).  Caught here instead (a caught
    signal is back to its default in a child after exec): SIGINT as Python's own
    handler (KeyboardInterrupt, as in a run from a terminal), SIGHUP by a handler
    that does nothing (this process still outlives a hang-up).  The tests of a
    signal ignored at start ignore it in their child themselves (preexec_fn)."""
    import signal
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, lambda _signum, _frame: None)


_stop_signals_reach_the_systems_tests_start()

# Log files of the systems the tests run go to a temporary state directory.
_STATE = tempfile.mkdtemp(prefix="wsuper-test-state-")
os.environ.setdefault("XDG_STATE_HOME", _STATE)
# removed at exit by the process that made it (each xdist worker makes its own): a
# run of the suite left ~2 of them in /tmp, and a day of runs hundreds
atexit.register(lambda pid=os.getpid(): os.getpid() == pid
                and shutil.rmtree(_STATE, ignore_errors=True))
# and the systems' locks and admin sockets (endpoint.runtime_dir) in a runtime directory
# of its own: with /tmp/wsuper-UID shared, two workers' tests that ran `up` of one
# system file (examples/calc/hello.toml) at once found it running, and one exited 2
# (a login's /run/user/UID is as shared: set or not, each test process has its own)
_RUNTIME = tempfile.mkdtemp(prefix="wsuper-test-run-")
_MADE_BY = os.getpid()
os.environ["XDG_RUNTIME_DIR"] = _RUNTIME
atexit.register(lambda pid=os.getpid(): os.getpid() == pid
                and shutil.rmtree(_RUNTIME, ignore_errors=True))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Tests' temporary directories under a short, fresh directory of /tmp.  A Unix
    socket's path has at most 107 bytes, and the tests make systems whose sockets
    (`run/wsuper/system-<hash>.admin.sock`) go in their `tmp_path`: pytest's own
    `/tmp/pytest-of-<user>/pytest-<n>/`, with pytest-xdist's `popen-gw<k>/` for each
    worker, left some of them 1 byte short.  Not on xdist's workers, which are given
    theirs, and not when the command line names one (`--basetemp`)."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="wst")
        config._wsuper_basetemp = config.option.basetemp


#: Files that take long for their number of tests (a run of the benchmark suite, of
#: RPC stress, fuzz runs, a file's tests again under ASan): handed out first.
#: pytest-xdist hands whole files (--dist loadfile) to the workers as they come free,
#: by default the files with the most tests first, which put these last: the suite
#: ended with one worker running the RPC stress test (30 s) or the benchmarks (33 s)
#: alone.  The rest follow as xdist would order them (--no-loadscope-reorder, in
#: pyproject.toml, keeps this order).
LONG_FOR_THEIR_TESTS = (
    "tests/integration/test_benchmarks.py",
    "tests/integration/test_rpc_stress.py",
    "tests/unit/test_fuzz_protocol.py",
    "tests/unit/test_fuzz_policy.py",
    "tests/unit/test_fuzz_router_scenarios.py",
    "tests/unit/test_fuzz_attenuation.py",
    "tests/integration/test_examples.py",
    "tests/integration/test_tutorial.py",
    "tests/integration/test_hostile_params.py",
)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """The test modules pytest rewrites (for its assertion messages) are kept, as
    Python keeps any module's compiled code, in `__pycache__/*-pytest-*.pyc`, and
    read back while their sources stay as they were.  PYTHONDONTWRITEBYTECODE, set
    on the project's VM, kept pytest from writing them: every run's every
    collecting process (each xdist worker, each ASan rerun) rewrote all ~100 test
    modules again, ~9 s of CPU each before its first test (collect-only, -n 0:
    11.7 s of CPU; 2.2 s read back).  Only while the tests are collected: what the
    tests import later, and the commands they run, are left as the VM has them."""
    was = sys.dont_write_bytecode
    sys.dont_write_bytecode = False
    try:
        return (yield)
    finally:
        sys.dont_write_bytecode = was


def pytest_collection_modifyitems(session, config, items):
    """The order the files are handed out in (LONG_FOR_THEIR_TESTS above), each
    file's tests in their own order; the same on every worker."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    first = {f: i for i, f in enumerate(LONG_FOR_THEIR_TESTS)}
    order = sorted(files, key=lambda f: (first.get(f, len(first)), -len(files[f])))
    items[:] = [item for f in order for item in files[f]]


def pytest_sessionfinish(session, exitstatus):
    """The short directory above goes when every test passed (pytest keeps its own
    last three runs' to look at; a failed run's stays, and its path is printed)."""
    made = getattr(session.config, "_wsuper_basetemp", None)
    if made is None:
        return
    if exitstatus == 0:
        shutil.rmtree(made, ignore_errors=True)
    else:
        session.config._wsuper_kept = made


def pytest_terminal_summary(terminalreporter, config):
    kept = getattr(config, "_wsuper_kept", None)
    if kept is not None:
        terminalreporter.write_line(f"tests' temporary directories kept in {kept}")


#: Signals whose handlers a command run in this process installs (`up`'s
#: startsignals, `trace`'s), and which later tests rely on being Python's own.
_HANDLED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGCHLD", "SIGTTOU")


@pytest.fixture(autouse=True)
def _signal_handlers_as_they_were():
    """Each test leaves the process's signal handlers (and unraisable hook) as it
    found them: an in-process `cli.main(["up", ...])` left `up`'s SIGINT handler
    installed, and a later test that raised SIGINT got no KeyboardInterrupt."""
    import signal
    before = {s: signal.getsignal(getattr(signal, s)) for s in _HANDLED}
    hook = sys.unraisablehook
    yield
    for s, handler in before.items():
        if handler is not None and signal.getsignal(getattr(signal, s)) is not handler:
            signal.signal(getattr(signal, s), handler)
    sys.unraisablehook = hook


def read_line(proc, timeout: float = 60, stream: str = "stdout"):
    """The next line `proc` writes to its `stream` (a pipe), read from the descriptor
    a byte at a time, so nothing after it is taken; str or bytes as the pipe gives
    them, "" (b"") at the end of its output.  `proc.stdout.readline()` reads ahead
    into the file object's buffer, which `communicate(timeout=...)` never looks at
    (it reads the descriptor): what the process wrote just after that line was
    lost to the test.  A test waited for `held`, then looked for
    `SIGINT, stopping` in what communicate() gave, and failed whenever the machine
    was slow enough for both lines to be in the pipe at its first read (CI, 1 in
    ~50 runs).  tests/unit/test_code_rules.py keeps the tests to this one."""
    pipe = getattr(proc, stream)
    fd = pipe.fileno()
    deadline = time.monotonic() + timeout
    data = bytearray()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not readable(fd, left):
            raise AssertionError(f"no whole line from pid {proc.pid} within {timeout} s "
                                 f"(read so far: {bytes(data)!r})")
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    if isinstance(pipe, io.TextIOBase):
        return data.decode(pipe.encoding or "utf-8", errors="replace")
    return bytes(data)


def lines_of(proc, timeout: float = 60, stream: str = "stdout"):
    """`proc`'s `stream` line by line to its end (read_line), each within `timeout`."""
    while line := read_line(proc, timeout, stream):
        yield line


class Running:
    """A `wsuper up` subprocess whose output lines (stdout and stderr, in the order
    they come, supervisor events without their time) can be awaited."""

    def __init__(self, args, cwd=None, env=None, preexec_fn=None):
        if preexec_fn is None:          # as run_wsuper's commands (tests/cmdserver.py)
            from tests import cmdserver
            self.proc = cmdserver.popen(args, root=ROOT, cwd=cwd or ROOT, env=env)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.cli", *args], cwd=cwd or ROOT, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self._unread = b""          # output read past the last whole line

    def _line(self, deadline: float) -> str | None:
        """The next whole output line, waiting until `deadline` at most (poll, then
        read what there is: a readline() blocked past any timeout while the
        system printed nothing, and the test ended by pytest-timeout with none of
        the output); None at the deadline, "" at the end of the output."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._unread:
            left = deadline - time.monotonic()
            if left <= 0 or not readable(fd, left):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                line, self._unread = self._unread, b""
                return line.decode(errors="replace")
            self._unread += chunk
        line, self._unread = self._unread.split(b"\n", 1)
        return line.decode(errors="replace") + "\n"

    def wait_for(self, fragment, timeout=30, start=0):
        """The first output line (from line `start` on) containing `fragment`."""
        deadline = time.monotonic() + timeout
        for line in self.lines[start:]:
            if fragment in line:
                return line
        while True:
            line = self._line(deadline)
            if not line:
                break
            line = strip_time(line.rstrip("\n"))
            self.lines.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"never saw {fragment!r} within {timeout} s; output:\n"
                             + "\n".join(self.lines))

    def next_start(self, name, start=0):
        """The first line from line `start` on that ends a start of compartment
        `name`: it is ready, or it failed to start."""
        k = start
        while True:
            line = self.wait_for(name, start=k)
            k = self.lines.index(line, k) + 1
            if line.startswith((f"wsuper: ready {name}",
                                f"wsuper: compartment {name} failed to start")):
                return line

    def finish(self, timeout=30):
        out, _ = self.proc.communicate(timeout=timeout)
        out, self._unread = (self._unread + out).decode(errors="replace"), b""
        self.lines += [strip_time(line) for line in out.splitlines()]
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.finish(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.finish()


@pytest.fixture
def wsuper():
    started = []

    def start(*args, cwd=None):
        r = Running(args, cwd)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def external_client(socket_path, body, timeout=30):
    """Run `await body(gateway)` in a stock pycapnp client connected to the external socket."""
    import asyncio

    import capnp

    import capnp_schemas

    async def main():
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(socket_path)
            client = capnp.TwoPartyClient(stream)
            return await body(client.bootstrap().cast_as(capnp_schemas.host.Gateway))

    async def bounded():
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


def audit_calls(path):
    """The capability-call records of an audit file (not the run start/stop markers)."""
    import json
    with open(path) as f:
        return [r for r in map(json.loads, f) if "capability" in r]


class Ran:
    """A finished `wsuper` command: `stdout` (plugin lines), `stderr` (supervisor
    events, without their times), and `output` (both, events after the lines)."""

    def __init__(self, r: subprocess.CompletedProcess):
        self.returncode = r.returncode
        self.stdout = r.stdout
        self.stderr = "".join(strip_time(line) + "\n" for line in r.stderr.splitlines())
        self.raw_stderr = r.stderr
        self.output = self.stdout + self.stderr


def run_wsuper(*args, timeout=60, merged=False, env=None, cwd=ROOT):
    """Run a wsuper command to its end (`python -m supervisor.cli ARGS`, as a child
    of tests/cmdserver.py's server: a real process that did not import again what the
    server imported; WSUPER_TEST_FRESH=1 for a new interpreter each time).
    `merged`: stdout and stderr as one stream, in the order the lines came (in
    `stdout`)."""
    from tests import cmdserver
    r = cmdserver.run(args, root=ROOT, cwd=cwd, env=env, merged=merged, timeout=timeout)
    if merged:
        r.stdout = "".join(strip_time(line) + "\n" for line in r.stdout.splitlines())
        r.stderr = ""
    return Ran(r)


def pytest_unconfigure(config):
    from tests import cmdserver
    cmdserver.close()
    # the state and runtime directories now too (and at exit, above): a process that
    # ends without running atexit (an xdist worker torn down) left them in /tmp
    if os.getpid() == _MADE_BY:
        for made in (_STATE, _RUNTIME):
            shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="session")
def wasi_guests(tmp_path_factory):
    """The C test programs of tests/integration/guests/wasi, built with the real toolchain."""
    from supervisor import toolchain
    out = tmp_path_factory.mktemp("wasi-guests")
    src = os.path.join(ROOT, "tests", "integration", "guests", "wasi")
    built = {}
    for name in ("posix", "probe", "stdout_file"):
        built[name] = toolchain.build([os.path.join(src, name + ".c")], str(out / f"{name}.wasm"))
    built["rustfs"] = toolchain.build_rust(os.path.join(src, "rustfs.rs"), str(out / "rustfs.wasm"))
    return built


GUESTS_C = os.path.join(ROOT, "tests", "integration", "guests", "c")


@pytest.fixture(scope="session")
def echo_plugin(tmp_path_factory):
    """tests/integration/guests/c/echo.c, with bindings generated from echo.capnp."""
    from supervisor import bindgen, toolchain
    out = tmp_path_factory.mktemp("echo")
    bindgen.generate(os.path.join(GUESTS_C, "echo.capnp"), str(out / "include"))
    return toolchain.build([os.path.join(GUESTS_C, "echo.c")], str(out / "echo.wasm"),
                           reactor=True, include=[str(out / "include")])
