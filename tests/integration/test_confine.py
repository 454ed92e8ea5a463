"""Hostile Python inside a confined engine: the kernel still holds it.

The engine's own Python is assumed taken over.  This test loads a real module
into a real Engine, confines it exactly as `compartments.engine.main` does, and
then tries what an attacker would.  A second test checks a live engine under
`wsuper up` from the outside."""
import json
import os
import subprocess
import sys

import pytest

from compartments import confine
from tests.conftest import EXAMPLES

HOSTILE = r"""
import ctypes, json, os, resource, socket, stat, sys
from compartments.engine import Engine
from compartments.spec import EngineSpec
a, b = socket.socketpair()
engine = Engine(a, EngineSpec("calc", sys.argv[1], exports=True))
result = {"missing": engine.confine(), "sock": a.fileno()}

def attempt(name, f):
    try:
        f()
        result[name] = "allowed"
    except BaseException as e:
        result[name] = type(e).__name__

def fork():
    if os.fork() == 0:
        os._exit(0)

attempt("read_file", lambda: open("/etc/hostname").read())
attempt("write_file", lambda: open(sys.argv[2], "w").write("x"))
attempt("list_dir", lambda: os.listdir("/"))
attempt("tcp_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
attempt("fork", fork)
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
attempt("setuid", lambda: os.setuid(0))
attempt("ptrace", lambda: ctypes.CDLL(None, use_errno=True).ptrace(0, 0, 0, 0) == 0 or
        (_ for _ in ()).throw(PermissionError()))
result["no_new_privs"] = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)
result["env"] = dict(os.environ)
fds = {}
for fd in range(256):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    null = stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    fds[fd] = ("null" if null else "dir" if stat.S_ISDIR(st.st_mode) else
               "socket" if stat.S_ISSOCK(st.st_mode) else "pipe" if stat.S_ISFIFO(st.st_mode)
               else "file")
result["fds"] = fds
result["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
result["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
print(json.dumps(result))
sys.stdout.flush()
os._exit(0)     # as the engine does: no library destructors inside the sandbox
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux confinement")
def test_hostile_python_in_a_confined_engine_is_held_by_the_kernel(tmp_path):
    target = tmp_path / "written-by-the-engine"
    r = subprocess.run([sys.executable, "-I", "-c", HOSTILE, f"{EXAMPLES}/calc.wat", str(target)],
                       env={}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    missing = confine.probe()
    if not any("Landlock" in m for m in missing):
        assert got["read_file"] == "PermissionError"      # Landlock: no path at all
        assert got["list_dir"] == "PermissionError"
    assert got["write_file"] in ("PermissionError", "OSError")
    assert not target.exists()
    if not any("seccomp" in m for m in missing):
        assert got["tcp_socket"] == got["unix_socket"] == "PermissionError"
        assert got["fork"] == got["exec"] == got["setuid"] == "PermissionError"
        assert got["ptrace"] == "PermissionError"
    if not missing:
        assert got["signal_parent"] == "PermissionError"  # Landlock scope (ABI >= 6)
    assert got["no_new_privs"] == 1
    # nothing inherited; Python itself may set LC_CTYPE (PEP 538 locale coercion)
    assert set(got["env"]) <= {"LC_CTYPE"}
    # stderr, its socket and wasmtime's memory image; everything else is /dev/null
    live = {int(fd): kind for fd, kind in got["fds"].items() if kind != "null"}
    assert live.pop(got["sock"]) == "socket"
    assert live.pop(2) == "pipe"                 # stderr, read by the supervisor
    assert live.pop(1) == "pipe"                 # here: this test's capture of stdout
    assert list(live.values()) == ["file"]       # /memfd:wasm-memory-image
    assert got["fsize"] == 0 and got["nofile"] <= max(map(int, got["fds"])) + 8


def test_a_live_engine_is_confined(tmp_path, wsuper):
    sock = tmp_path / "s.sock"
    (tmp_path / "system.toml").write_text(f"""
[system]
schemas = ["{EXAMPLES}/calc.capnp"]
socket = "{sock}"
[compartments.calc]
module = "{EXAMPLES}/calc.wat"
exports = "Calc"
external = true
""")
    run = wsuper("up", str(tmp_path / "system.toml"))
    pid = int(run.wait_for("ready calc").split("pid=")[1].split()[0])
    status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines()
                  if ":\t" in line)
    assert status["NoNewPrivs"].strip() == "1"
    if confine.seccomp_supported():
        assert status["Seccomp"].strip() == "2"
    assert status["Threads"].strip() == "1"
    assert open(f"/proc/{pid}/environ", "rb").read() == b""
    fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    live = sorted(v for v in fds.values() if v != "/dev/null")
    assert fds["0"] == fds["1"] == "/dev/null"
    assert [v.split(":")[0] for v in live] == ["/memfd", "pipe", "socket"]
