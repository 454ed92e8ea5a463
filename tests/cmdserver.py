"""Run `python -m supervisor.cli ARGS` for the tests without paying the interpreter's
imports each time.

The suite runs the `wsuper` command several hundred times, and most of a short
one (~0.2 s of the ~0.3 s of CPU of a `wsuper check`) was the interpreter
importing capnp (with asyncio and ssl), wasmtime, trio and attrs again.  A server,
one per test process, imports those once and forks a child for each command.  The
child is a real process, as `subprocess.run`/`Popen` make: the command's own
descriptors for stdin, stdout and stderr (passed over a Unix socket), its argv,
environment and working directory; it runs `supervisor.cli` as `__main__` with
`runpy` and ends as the program does (`cli.run`), or through the interpreter's
own exit where the command raises.  It stays a zombie until its test has read
its status, as a child of the test would.  Only modules outside the project are
imported before the fork: the project's own are imported by each command
afresh, so nothing they compute at import time is shared; and a command given
other PYTHON*/locale variables than the server had starts a new interpreter,
which reads them.

WSUPER_TEST_FRESH=1 runs every command in a new interpreter instead (so does a
test process whose server cannot be started).  Tests that are about how the
command starts (its imports, signals at start-up, a signal mask or rlimits set
by its parent: `preexec_fn`) start their own interpreters.
"""
from __future__ import annotations

import array
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

#: imported before the fork: everything the commands import from outside the project
PRELOAD = ("argparse", "asyncio", "json", "ssl", "subprocess", "tomllib", "socket",
           "concurrent.futures", "attrs", "attr", "trio", "capnp", "wasmtime")

_STATUS = struct.Struct("!q")


def _serve(path: str):
    """The server's loop.  Returns only in a forked child, with its request."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    for name in PRELOAD:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(rfd, selectors.EVENT_READ)
    running: dict[int, socket.socket] = {}     # pid -> the connection it came on
    told: dict[socket.socket, int] = {}        # its end said: reaped when they hang up
    os.write(1, b"ready\n")
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    sel.close()
                    listener.close()
                    os.close(rfd)
                    os.close(wfd)
                    for other in [*running.values(), *told]:
                        other.close()
                    try:
                        return _request(conn)
                    finally:
                        conn.close()
                running[pid] = conn
                try:
                    conn.sendall(_STATUS.pack(pid))
                except OSError:
                    pass
            elif key.fileobj is rfd:
                try:
                    os.read(rfd, 4096)
                except BlockingIOError:
                    pass
            else:                              # the test has its status: reaped now
                conn = key.fileobj
                sel.unregister(conn)
                os.waitpid(told.pop(conn), 0)
                conn.close()
        # an ended command stays a zombie until its test has read its status, as a
        # child of the test would (its pid is not reused under a late signal)
        for pid, conn in list(running.items()):
            ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if ended is None:
                continue
            del running[pid]
            code = ended.si_status if ended.si_code == os.CLD_EXITED else -ended.si_status
            try:
                conn.sendall(_STATUS.pack(code))
            except OSError:
                os.waitpid(pid, 0)
                conn.close()
                continue
            told[conn] = pid
            sel.register(conn, selectors.EVENT_READ)
        if os.getppid() == 1:                  # the test process is gone
            os._exit(0)


def _request(conn: socket.socket) -> dict:
    """In the child: the request, and its three descriptors in place of 0, 1, 2."""
    fds = array.array("i")
    data = b""
    while not data.endswith(b"\n"):
        msg, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * fds.itemsize))
        if not msg:
            os._exit(127)
        data += msg
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    request = json.loads(data)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    return request


def _child_main(request: dict):
    """In the child, back at the top of the server's interpreter: become the command."""
    import runpy
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # sys.stdin, stdout and stderr were made at the server's start, on pipes too, as
    # a new interpreter's are, and nothing went through them: theirs now are the
    # command's descriptors
    sys.argv = [request["argv0"], *request["args"]]
    sys.path[0] = request["cwd"]
    # the program's own end (cli.run: atexit, flushed streams, no teardown), or, where
    # it raises SystemExit or another exception, the interpreter's, from the top of
    # the server's `-c` script: this frame is all that is left of the server
    runpy.run_module("supervisor.cli", run_name="__main__", alter_sys=True)


class Server:
    """The server of one test process: started at its first command."""

    def __init__(self, root: str):
        self.root = root
        self.dir = tempfile.mkdtemp(prefix="wst-cmd-")
        self.path = os.path.join(self.dir, "s")
        self.read_at_start = _read_at_start(os.environ)
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; sys.path[0] = sys.argv[1]; from tests import cmdserver; "
             "cmdserver._child_main(cmdserver._serve(sys.argv[2]))", root, self.path],
            cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        from tests.conftest import read_line
        if read_line(self.proc) != b"ready\n":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("the command server did not start")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass

    def start(self, args, *, cwd, env, fds) -> tuple[socket.socket, int]:
        """A command started with `fds` as its stdin, stdout and stderr: the
        connection its exit status will come on, and its pid."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            pid = _STATUS.unpack(_recv_exactly(conn, _STATUS.size))[0]
            request = {"args": list(args), "cwd": cwd, "env": dict(env),
                       "argv0": os.path.join(self.root, "supervisor", "cli.py")}
            conn.sendmsg([json.dumps(request).encode() + b"\n"],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except BaseException:
            conn.close()
            raise
        return conn, pid

    def run(self, args, *, cwd, env, merged, timeout) -> subprocess.CompletedProcess:
        out_r, out_w = os.pipe()
        if merged:
            err_r, err_w = None, out_w
        else:
            err_r, err_w = os.pipe()
        try:
            conn, pid = self.start(args, cwd=cwd, env=env, fds=[0, out_w, err_w])
        finally:
            os.close(out_w)
            if err_r is not None:
                os.close(err_w)
        try:
            streams = _read_all([out_r] + ([err_r] if err_r is not None else []),
                                time.monotonic() + timeout if timeout else None)
            if streams is None:
                os.kill(pid, signal.SIGKILL)
                _ended(conn)
                raise subprocess.TimeoutExpired(["wsuper", *args], timeout)
            conn.settimeout(timeout)
            status = _ended(conn)
        finally:
            conn.close()
        out = _text(streams[0])
        err = _text(streams[1]) if err_r is not None else None
        return subprocess.CompletedProcess(["wsuper", *args], status, out, err)


def _read_at_start(env) -> dict:
    """What of an environment an interpreter reads as it starts (its import path,
    encodings, flags): a command given other values than the server was given
    runs in a new interpreter, which reads them."""
    return {k: v for k, v in env.items() if k.startswith(("PYTHON", "LC_")) or k == "LANG"}


def _text(data: bytes) -> str:
    """As `subprocess.run(text=True)` reads a stream: the locale's encoding, strict,
    and universal newlines."""
    import locale
    encoding = "utf-8" if sys.flags.utf8_mode else locale.getencoding()
    return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")


def _ended(conn: socket.socket) -> int:
    """The exit status that comes on `conn`, once the server has reaped the command
    (as `Popen.wait` leaves no zombie behind it)."""
    code = _STATUS.unpack(_recv_exactly(conn, _STATUS.size))[0]
    conn.settimeout(30)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)                                 # the server hangs up once it reaped
    conn.close()
    return code


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the command server went away")
        data += chunk
    return data


def _read_all(fds, until):
    """Everything written to the pipes `fds` until every writer closed them, or None
    if `until` (a monotonic time) came first.  The pipes are closed either way."""
    got = {fd: [] for fd in fds}
    sel = selectors.DefaultSelector()
    for fd in fds:
        sel.register(fd, selectors.EVENT_READ)
    try:
        while sel.get_map():
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                return None
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    got[key.fd].append(chunk)
                else:
                    sel.unregister(key.fd)
        return [b"".join(got[fd]) for fd in fds]
    finally:
        sel.close()
        for fd in fds:
            os.close(fd)


class Child:
    """A command started through the server, with its output (stdout and stderr
    together) on a pipe: as much of `subprocess.Popen`'s interface as the tests use
    (pid, args, stdout, returncode, poll, wait, communicate, send_signal, terminate,
    kill).  Its exit status comes from the server, whose child it is."""

    def __init__(self, server: Server, args, *, cwd, env):
        self.args = ["wsuper", *args]
        self.returncode = None
        out_r, out_w = os.pipe()
        try:
            self._conn, self.pid = server.start(args, cwd=cwd, env=env, fds=[0, out_w, out_w])
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
        self.stdout = open(out_r, "rb", buffering=0)
        self._read: list[bytes] = []

    def poll(self):
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._status()
            except BlockingIOError:
                pass
        return self.returncode

    def _status(self):
        data = self._conn.recv(_STATUS.size, socket.MSG_PEEK)
        if len(data) < _STATUS.size:
            if not data:
                raise ConnectionError("the command server went away")
            raise BlockingIOError
        self._conn.setblocking(True)
        self.returncode = _ended(self._conn)

    def wait(self, timeout=None):
        if self.returncode is None:
            self._conn.setblocking(True)
            self._conn.settimeout(timeout)
            try:
                self._conn.recv(_STATUS.size, socket.MSG_PEEK | socket.MSG_WAITALL)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.returncode = _ended(self._conn)
        return self.returncode

    def communicate(self, input=None, timeout=None):
        """Output to its end (what an earlier call that timed out read, too), then
        the exit status."""
        assert input is None
        until = None if timeout is None else time.monotonic() + timeout
        if not self.stdout.closed:
            fd = self.stdout.fileno()
            sel = selectors.DefaultSelector()
            sel.register(fd, selectors.EVENT_READ)
            try:
                while True:
                    left = None if until is None else until - time.monotonic()
                    if left is not None and left <= 0:
                        raise subprocess.TimeoutExpired(self.args, timeout)
                    if sel.select(left):
                        chunk = os.read(fd, 1 << 16)
                        if not chunk:
                            break
                        self._read.append(chunk)
            finally:
                sel.close()
            self.stdout.close()
        self.wait(None if until is None else max(0.0, until - time.monotonic()))
        out, self._read = b"".join(self._read), []
        return out, None

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


_server: Server | None = None
_lock = threading.Lock()
_failed = False


def _serving(root: str, env) -> Server | None:
    """This test process's server, started if need be; None where a command in `env`
    runs in a new interpreter."""
    global _server, _failed
    if os.environ.get("WSUPER_TEST_FRESH") == "1" or _failed:
        return None
    with _lock:
        if _server is None or _server.proc.poll() is not None:
            try:
                _server = Server(root)
            except (OSError, RuntimeError):
                _failed = True
                return None
    return _server if _read_at_start(env) == _server.read_at_start else None


def popen(args, *, root: str, cwd: str, env=None):
    """`subprocess.Popen([python, -m, supervisor.cli, *args], stdout=PIPE,
    stderr=STDOUT)`, through this test process's server where it can."""
    env = os.environ if env is None else env
    server = _serving(root, env)
    if server is not None:
        return Child(server, args, cwd=os.fspath(cwd), env=env)
    return subprocess.Popen([sys.executable, "-m", "supervisor.cli", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run(args, *, root: str, cwd: str, env=None, merged=False, timeout=None):
    """`subprocess.run([python, -m, supervisor.cli, *args])`, capturing text, through
    this test process's server (or a new interpreter: WSUPER_TEST_FRESH=1)."""
    env = os.environ if env is None else env
    server = _serving(root, env)
    if server is not None:
        return server.run(args, cwd=os.fspath(cwd), env=env, merged=merged, timeout=timeout)
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                          text=True, timeout=timeout)


def close():
    global _server
    if _server is not None:
        _server.close()
        _server = None
