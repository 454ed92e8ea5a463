"""Where a running system is reached: sockets nobody else can take, one system per
file, the admin protocol, and a terminal that goes away."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from supervisor import endpoint
from tests.conftest import EXAMPLES, ROOT, Running
from tests.integration.guests import HERE

SERVING = """
[system]
schemas = ["{examples}/calc.capnp", "{guests}/spin.capnp"]

[compartments.calc]
module = "{examples}/calc.wat"
exports = "Calc"

[compartments.spin]
module = "{guests}/spin.wat"
exports = "Spin"

[compartments.user]
module = "{guests}/spin.wat"
exports = "Spin"
[compartments.user.grants]
calc = {{ compartment = "calc", revocable = true }}
"""


def _system(folder, name="system.toml"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(SERVING.format(examples=EXAMPLES, guests=HERE))
    return path


def _up(path, env=None, **kw):
    r = Running(["up", path], **kw) if env is None else _Env(["up", path], env)
    return r


class _Env(Running):
    def __init__(self, args, env):
        super().__init__(args, env={**os.environ, **env})


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR for the test (and for endpoint's paths here)."""
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return str(d)


def test_two_systems_whose_files_share_a_name_never_share_sockets(tmp_path, xdg):
    env = {"XDG_RUNTIME_DIR": xdg}
    a, b = _system(tmp_path / "a"), _system(tmp_path / "b")
    ra, rb = _up(a, env), _up(b, env)
    try:
        for r in (ra, rb):
            r.wait_for("all compartments ready")
        assert endpoint.admin_socket_path(a) != endpoint.admin_socket_path(b)
        # revoke reaches the system it names, and says which
        r = _cli("revoke", a, "user.calc", env=env)
        assert r.returncode == 0 and r.stdout.strip() == "wsuper: ok: revoked user.calc"
        ra.wait_for("revoked user.calc")
        assert not any("revoked" in l for l in rb.lines)
        # the second one stopping leaves the first one's sockets alone
        rb.proc.send_signal(signal.SIGTERM)
        assert rb.finish() == 143
        assert os.path.exists(endpoint.admin_socket_path(a))
        assert not os.path.exists(endpoint.admin_socket_path(b))
    finally:
        ra.stop()
        rb.stop()


def test_a_second_up_of_a_running_system_is_refused(tmp_path, xdg):
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path)
    first = _up(path, env)
    try:
        first.wait_for("all compartments ready")
        r = _cli("up", path, env=env)
        assert r.returncode == 2
        assert f"this system is already running (pid {first.proc.pid})" in r.stdout + r.stderr
        assert first.proc.poll() is None
    finally:
        first.stop()


@pytest.mark.parametrize("how", ["another XDG_RUNTIME_DIR", "no XDG_RUNTIME_DIR",
                                 "a link to its file"])
def test_a_second_up_of_a_running_system_is_refused_whatever_its_runtime_directory(
        tmp_path, xdg, how):
    """The lock file lives in the runtime directory, which XDG_RUNTIME_DIR moves: a
    second `wsuper up` of the same system under another one (or none: /tmp) took a
    lock of its own and ran beside the first, both writing and rotating one audit
    file and one log directory, both opening the same grants.  The system file
    itself is locked too, however it is reached."""
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path / "sys")
    with open(path) as f:
        text = f.read().replace("[system]\n", f'[system]\naudit = "{tmp_path}/audit.jsonl"\n'
                                               f'logs = "{tmp_path}/logs"\n', 1)
    with open(path, "w") as f:
        f.write(text)
    first = _up(path, env)
    try:
        first.wait_for("all compartments ready")
        other = tmp_path / "other-xdg"
        other.mkdir(mode=0o700)
        second, second_env = path, {"XDG_RUNTIME_DIR": str(other)}
        if how == "no XDG_RUNTIME_DIR":
            second_env = {"XDG_RUNTIME_DIR": ""}
        elif how == "a link to its file":
            os.symlink(tmp_path / "sys", tmp_path / "link")
            second = str(tmp_path / "link" / "system.toml")
        r = _cli("up", second, env=second_env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "this system is already running" in r.stdout + r.stderr, r.stdout + r.stderr
        assert first.proc.poll() is None
        r = _cli("status", path, env=env)                 # the first one is untouched
        assert r.returncode == 0 and "calc" in r.stdout, r.stdout + r.stderr
    finally:
        first.stop()


def test_a_request_meant_for_another_system_is_refused(tmp_path, xdg):
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path)
    run = _up(path, env)
    try:
        run.wait_for("all compartments ready")
        import json
        import socket
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(endpoint.admin_socket_path(path))
            s.sendall(b'{"op": "revoke", "grant": "user.calc", "system": "/elsewhere"}\n')
            answer = json.loads(s.makefile().readline())
        assert not answer["ok"] and "not /elsewhere" in answer["error"]
        assert not any("revoked" in l for l in run.lines)
    finally:
        run.stop()


def test_a_system_is_still_asked_after_a_link_on_its_files_way_moves(tmp_path, xdg):
    """A system started as cur/system.toml, cur a link to v1 (a common way to
    deploy), is the system of v1/system.toml: its lock and sockets are named after
    that.  But it checked each admin request against what its path resolved to at
    the moment it answered: once cur pointed at v2, a request for v1/system.toml
    (the only path that still finds its socket) was refused as meant for another
    system ('this is .../cur/system.toml, not .../v1/system.toml'), and nothing
    could reach it: not status, not revoke, not stop.  Its identity is the one it
    started with."""
    env = {"XDG_RUNTIME_DIR": xdg}
    v1, v2 = _system(tmp_path / "v1"), _system(tmp_path / "v2")
    os.symlink(tmp_path / "v1", tmp_path / "cur")
    run = _up(str(tmp_path / "cur" / "system.toml"), env)
    try:
        run.wait_for("all compartments ready")
        os.symlink(tmp_path / "v2", tmp_path / "next")
        os.replace(tmp_path / "next", tmp_path / "cur")      # the link moves, atomically
        r = _cli("status", v1, env=env)
        assert r.returncode == 0 and "calc" in r.stdout, r.stdout + r.stderr
        r = _cli("revoke", v1, "user.calc", env=env)
        assert r.returncode == 0 and "revoked user.calc" in r.stdout, r.stdout + r.stderr
        r = _cli("status", v2, env=env)                   # nothing runs as v2's
        assert r.returncode != 0 and "no running system" in r.stderr, r.stdout + r.stderr
        r = _cli("stop", v1, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert run.finish() == 0
    finally:
        run.stop()


def test_another_users_entry_where_a_log_directory_goes_is_named_as_theirs(tmp_path, xdg):
    """The same for a directory of the system file's (`logs` in a sticky directory,
    as /tmp): another user's FIFO there was said "is not a directory ...; remove
    it", which only they or root can do."""
    if os.getuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.mkfifo(sticky / "logs")
    os.lchown(sticky / "logs", 65534, 65534)
    path = _system(tmp_path)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("[system]\n", f'[system]\nlogs = "{sticky}/logs"\n', 1))
    for command in ("up", "check"):
        r = _cli(command, path, env={"XDG_RUNTIME_DIR": xdg})
        assert r.returncode == 2, (command, r.stderr)
        (line,) = r.stderr.strip().splitlines()
        assert f"log directory {sticky}/logs is a FIFO of uid 65534, not a directory of " \
               f"yours (uid 0): only that user or root can remove it; choose another path" \
            in line, (command, line)


@pytest.mark.parametrize("spoil", ["mode", "symlink", "owner", "another's fifo",
                                   "another's symlink"])
def test_a_runtime_directory_someone_else_could_have_made_is_refused(tmp_path, xdg, spoil):
    env = {"XDG_RUNTIME_DIR": xdg}
    target = os.path.join(xdg, "wsuper")
    if spoil.startswith("another's"):
        # not a directory, and another user's (/tmp/wsuper-UID is a name anyone can
        # take first): "is not a directory ...; remove it" was all it said, which an
        # ordinary user cannot do in /tmp (sticky)
        if os.getuid() != 0:
            pytest.skip("making a file owned by another user needs root")
        if spoil == "another's fifo":
            os.mkfifo(target, 0o644)
        else:
            os.symlink(tmp_path, target)
        os.lchown(target, 65534, 65534)
        kind = "a FIFO" if spoil == "another's fifo" else "a symbolic link"
        for command in ("up", "check", "status"):
            r = _cli(command, _system(tmp_path), env=env)
            assert r.returncode == (1 if command == "status" else 2), (command, r.stderr)
            (line,) = r.stderr.strip().splitlines()
            assert f"{target} is {kind} of uid 65534, not a directory of yours" in line \
                and "only that user or root can remove it; it is $XDG_RUNTIME_DIR/wsuper " \
                f"(XDG_RUNTIME_DIR={xdg}): set XDG_RUNTIME_DIR to a directory of yours" \
                in line, (command, line)
        return
    if spoil == "mode":
        os.mkdir(target, 0o755)
        os.chmod(target, 0o755)
    elif spoil == "symlink":
        os.mkdir(tmp_path / "elsewhere", 0o700)
        os.symlink(tmp_path / "elsewhere", target)
    else:
        if os.getuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        os.mkdir(target, 0o700)
        os.chown(target, 65534, 65534)
    why = {"mode": "mode 0755; it must be 0700", "symlink": "is not a directory",
           "owner": "belongs to uid 65534"}[spoil]
    r = _cli("up", _system(tmp_path), env=env)
    assert r.returncode == 2
    (line,) = r.stdout.strip().splitlines() + r.stderr.strip().splitlines()
    assert line.startswith(f"wsuper: error: {target}"), line
    assert why in line
    # and check, which is to refuse what up refuses, says it too (it said 0)
    r = _cli("check", _system(tmp_path), env=env)
    assert r.returncode == 2, r.stdout
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("wsuper: error: ") and f"{target}" in line and why in line, line
    if spoil == "owner":
        # "remove it" was all it said: an ordinary user cannot remove the directory
        # another made first in /tmp (sticky); what can be done is said
        assert "which only that user or root can remove; it is $XDG_RUNTIME_DIR/wsuper " \
            f"(XDG_RUNTIME_DIR={xdg}): set XDG_RUNTIME_DIR to a directory of yours" in line, \
            line


@pytest.mark.parametrize("spoil", ["mode", "symlink", "owner"])
def test_commands_never_ask_a_system_in_a_runtime_directory_up_refuses(tmp_path, xdg, spoil):
    """`up` refuses a runtime directory someone else could have made (the test above),
    but stop, status, revoke and probe connected to the lock and socket in it as they
    found them: whoever made /tmp/wsuper-UID first could answer them as the system
    ('revoked', a status of its choosing, escapes for the terminal included).  They
    now refuse that directory as up does, and ask nothing there."""
    import fcntl
    import json
    import socket
    import threading
    path = _system(tmp_path)
    target = os.path.join(xdg, "wsuper")
    if spoil == "mode":
        os.mkdir(target, 0o777)
        os.chmod(target, 0o777)
    elif spoil == "symlink":
        os.mkdir(tmp_path / "elsewhere", 0o700)
        os.symlink(tmp_path / "elsewhere", target)
    else:
        if os.getuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        os.mkdir(target, 0o700)
        os.chown(target, 65534, 65534)
    # the impostor: holds the lock, answers every request as the system would
    lock = os.open(endpoint.lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    server = socket.socket(socket.AF_UNIX)
    server.bind(endpoint.admin_socket_path(path))
    server.listen(8)
    asked = []

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                asked.append(conn.recv(1 << 16))
                conn.sendall(json.dumps({
                    "ok": True, "system": endpoint.identity(path), "text": "revoked user.calc",
                    "pid": 1, "probes": [],
                    "status": {"pid": 1, "uptime_s": 1, "run": "x", "external": [],
                               "compartments": [{"name": "\x1b]0;owned\x07", "state": "up",
                                                 "pid": 1, "uptime_s": 1, "restarts": 0,
                                                 "generation": 1, "served": 0, "failed": 0,
                                                 "memory_bytes": 0, "handles": 0,
                                                 "calls_from": 0, "calls_to": 0}]}})
                    .encode() + b"\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        env = {"XDG_RUNTIME_DIR": xdg}
        for args in (["status", path], ["revoke", path, "user.calc"], ["stop", path],
                     ["probe", path, "calc", "list"]):
            r = _cli(*args, env=env)
            assert r.returncode != 0, (args, r.stdout, r.stderr)
            assert "revoked" not in r.stdout and "owned" not in r.stdout + r.stderr, args
            assert "\x1b" not in r.stdout + r.stderr
            assert target in r.stderr, (args, r.stderr)
        assert asked == []
    finally:
        _stop_listening(server)
        os.close(lock)
        t.join(5)



def _stop_listening(server):
    """Close a listening socket a thread waits on in accept(): close() alone does not
    wake it (the test waited the whole 5 s of its join); shutdown() does."""
    import socket
    try:
        server.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    server.close()

@pytest.mark.parametrize("spoil", ["mode", "symlink", "owner", "shared", "option"])
def test_call_never_asks_a_socket_in_a_directory_up_refuses(tmp_path, xdg, spoil):
    """`wsuper call` connected to the external socket wherever it found one: in a
    runtime directory someone else made first (up refuses to run there), or in
    the directory a system file's `socket` (or `--socket`) names that others may
    write to (up refuses that too), whoever put a socket there was sent the call's
    parameters and answered it, said as the compartment's results.  It asks only
    a socket in a directory up would bind it in (endpoint.external_socket)."""
    import socket
    import threading
    path = _system(tmp_path)
    text = open(path).read().replace('exports = "Calc"\n', 'exports = "Calc"\nexternal = true\n',
                                     1)
    target = os.path.join(xdg, "wsuper")
    args = []
    if spoil == "mode":
        os.mkdir(target, 0o777)
        os.chmod(target, 0o777)
    elif spoil == "symlink":
        os.mkdir(tmp_path / "elsewhere", 0o700)
        os.symlink(tmp_path / "elsewhere", target)
    elif spoil == "owner":
        if os.getuid() != 0:
            pytest.skip("making a directory owned by another user needs root")
        os.mkdir(target, 0o700)
        os.chown(target, 65534, 65534)
    else:
        target = str(tmp_path / "shared")
        os.mkdir(target)
        os.chmod(target, 0o777)
        if spoil == "shared":
            text = text.replace("[system]\n", f'[system]\nsocket = "{target}/x.sock"\n')
        else:
            args = ["--socket", f"{target}/x.sock"]
    with open(path, "w") as f:
        f.write(text)
    sock = os.path.join(target, "x.sock") if spoil in ("shared", "option") else \
        endpoint.default_socket_path(path)
    server = socket.socket(socket.AF_UNIX)         # the impostor's gateway
    server.bind(sock)
    server.listen(8)
    asked = []

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                asked.append(conn.recv(1 << 16))

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        r = _cli("call", path, "calc.add", "(a = 1234, b = 5678)", *args,
                 env={"XDG_RUNTIME_DIR": xdg})
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert r.stdout == ""
        assert "nor be asked there" in r.stderr and target in r.stderr, r.stderr
        assert asked == []
    finally:
        _stop_listening(server)
        t.join(5)


def test_a_socket_in_a_directory_others_may_write_is_refused(tmp_path, xdg):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    path = _system(tmp_path)
    with open(path, "a") as f:
        f.write('\n[compartments.calc.grants]\n')
    text = open(path).read().replace("[system]\n", f'[system]\nsocket = "{shared}/x.sock"\n')
    text = text.replace('exports = "Calc"\n', 'exports = "Calc"\nexternal = true\n', 1)
    open(path, "w").write(text)
    r = _cli("up", path, env={"XDG_RUNTIME_DIR": xdg})
    assert r.returncode == 2
    assert f"socket directory {shared} must belong to you and be writable by you only" \
        in r.stdout + r.stderr


def test_a_closed_terminal_stops_the_system_quietly_and_cleans_up(tmp_path, xdg):
    path = _system(tmp_path)
    env = {**os.environ, "XDG_RUNTIME_DIR": xdg}
    p = subprocess.Popen(f"{sys.executable} -m supervisor.cli up {path} 2>&1 | head -1", shell=True,
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=30)
    finally:                         # a system that did not stop must not outlive the test
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
    assert len(out.splitlines()) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    admin, lock = endpoint.admin_socket_path(path), endpoint.lock_path(path)
    deadline = time.monotonic() + 10
    while (os.path.exists(admin) or os.path.exists(lock)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(admin) and not os.path.exists(lock)
    assert shutil.which("pgrep") is None or subprocess.run(
        ["pgrep", "-f", f"supervisor.cli up {path}"], capture_output=True).returncode == 1


def test_a_stop_for_a_closed_terminal_is_said_in_the_log_files_and_the_audit(tmp_path, xdg):
    """`wsuper up S | head -1`: the system stops quietly (exit 0), as it should, but
    it said why nowhere: its log files ended with `stopped calc` and its audit with
    `run stopped`, as after a stop nobody asked for (every other stop says its
    cause there: a signal, `wsuper stop`, a failure).  Both say it now."""
    path = _system(tmp_path)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("[system]\n", f'[system]\naudit = "{tmp_path}/audit.jsonl"\n', 1))
    _up_until_ready_then_reader_goes(path, xdg, timeout=30)
    said = "the terminal's reader went away (stdout or stderr is a pipe whose reader " \
           "closed it): stopping"
    logs = _cli("logs", path, env={"XDG_RUNTIME_DIR": xdg})
    assert logs.returncode == 0, logs.stderr
    assert said in logs.stdout, logs.stdout
    with open(tmp_path / "audit.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert {"event": "stop requested", "reason": "the terminal's reader went away",
            "by": "operator"}.items() <= records[-2].items(), records[-2:]
    assert records[-1]["event"] == "run stopped", records[-1]


def test_lines_a_terminal_that_reads_nothing_did_not_take_at_stop_are_said(tmp_path, xdg):
    """An outside review of `up`'s end (r251): a plugin logs 20,000 lines and its
    program ends, which stops the system, while the terminal's reader reads
    nothing (a stopped pager, a collector that lags: the pipe is full).  The stop
    is bounded: `up` ends without waiting for the reader, and the lines still
    queued for the terminal go with the process, the run's last events among
    them.  `up` ended so, exit 0, the terminal cut off among the plugin's lines,
    and neither it nor the log files said a word of it.  The log files (which
    have every line) say how many the terminal did not show, and the count adds
    up: shown on the terminal and said not shown, every line is accounted for."""
    from tests.integration.guests import program
    n = 20_000
    (tmp_path / "flood.wat").write_text(program(f"""
    (loop $l
      (call $log_int (i32.const 300) (i32.const 4) (local.get $i))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {n}))))
    """, {"line": 300}))
    path = tmp_path / "system.toml"
    path.write_text(f'[system]\nschemas = []\nlogs = "{tmp_path}/logs"\n'
                    f'[compartments.app]\nmodule = "flood.wat"\n'
                    f'[compartments.app.limits]\nlog_rate = 1000000\n'
                    f'[compartments.app.grants]\nlog = {{ host = "log" }}\n')
    r, w = os.pipe()
    try:
        p = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "up", str(path)],
                             cwd=ROOT, env={**os.environ, "XDG_RUNTIME_DIR": xdg},
                             stdout=w, stderr=w)
        os.close(w)
        w = None
        try:
            assert p.wait(timeout=60) == 0       # nothing read from its terminal meanwhile
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        os.set_blocking(r, False)
        shown = b""
        while True:
            try:
                chunk = os.read(r, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    shown = shown.decode().splitlines()
    logged = (tmp_path / "logs" / "supervisor.log").read_text().splitlines()
    said = [line for line in logged if "the terminal did not take its last lines" in line]
    assert len(said) == 1, logged[-5:]
    left = int(said[0].split("(its reader reads nothing): ")[1].split()[0])
    # every line queued for the terminal: the plugin's and the supervisor's events
    # (each in supervisor.log too: `ready app`, `finished app`, a note at start)
    # but the note said after the count
    assert len(shown) < n and len(shown) + left == n + len(logged) - 1, \
        (len(shown), left, logged)


def _up_until_ready_then_reader_goes(path: str, xdg: str, timeout: float):
    """`wsuper up path` with stdout and stderr a pipe, read until every compartment
    is ready; then the reader goes, and up must end, exit 0, within `timeout`."""
    env = {**os.environ, "XDG_RUNTIME_DIR": xdg}
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "up", path], cwd=ROOT,
                         env=env, stdout=w, stderr=w)
    os.close(w)
    try:
        seen = b""
        with os.fdopen(r, "rb", buffering=0) as pipe:
            while b"all compartments ready" not in seen:
                chunk = pipe.read(4096)
                assert chunk, seen
                seen += chunk
        assert p.wait(timeout=timeout) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_the_same_system_through_a_symlinked_directory_is_the_same_system(tmp_path, xdg):
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    first = _up(path, env)
    try:
        first.wait_for("all compartments ready")
        r = _cli("up", str(tmp_path / "link" / "system.toml"), env=env)
        assert r.returncode == 2 and "this system is already running" in r.stderr
        r = _cli("revoke", str(tmp_path / "link" / "system.toml"), "user.calc", env=env)
        assert r.returncode == 0, r.stderr
    finally:
        first.stop()


def test_a_reader_that_goes_away_after_the_last_line_still_stops_the_system(tmp_path, xdg):
    # everything the system will print is read, then the reader goes: no write
    # would ever fail, so the supervisor must notice the closed pipe by itself
    path = _system(tmp_path)
    _up_until_ready_then_reader_goes(path, xdg, timeout=15)   # the reader gone: it ends
    admin = endpoint.admin_socket_path(path)
    deadline = time.monotonic() + 10
    while os.path.exists(admin) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(admin)


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_admin_clients_that_send_nothing_or_never_read_cannot_pile_up(tmp_path, xdg):
    """Any local process can connect to the admin socket.  Each connection took a
    descriptor until its request line came (5 s), and until its answer was taken
    (for ever): a request whose answer is larger than the socket's buffer (an
    unknown op of 64 KiB of characters printable escapes was echoed five times
    as long) held the connection and the answer's memory as long as the client
    did not read, and a few thousand connections took every descriptor of the
    supervisor (its log files stopped for good, its engines could not be
    restarted).  Now at most endpoint.ADMIN_CONNECTIONS are served at once (a new
    one closes the oldest still sending its request), an answer is never longer
    than the request allows, nor waits for its reader for long, and the system
    still answers its operator."""
    import json
    import socket
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path)
    run = _up(path, env)
    held = []
    try:
        run.wait_for("all compartments ready")
        pid = run.proc.pid
        before = _descriptors(pid)
        admin = endpoint.admin_socket_path(path)
        system = json.dumps(endpoint.identity(path)).encode()
        # the answer to this one (an unknown op) echoed the op, escaped
        huge = b'{"system":' + system + b',"op":"' + b"\x7f" * 65000 + b'"}\n'
        for i in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(admin)           # blocking: a unix socket's full backlog waits
            s.settimeout(10)
            if i % 3 == 0:                 # asks, and never reads the answer
                try:
                    s.sendall(huge)
                except OSError:
                    pass                    # closed to make room: so be it
            held.append(s)                  # the others send nothing at all
        assert _descriptors(pid) <= before + endpoint.ADMIN_CONNECTIONS + 4
        # one that reads gets its answer, bounded
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(admin)
            s.settimeout(10)
            s.sendall(huge)
            answer = s.makefile("rb").readline()
        assert len(answer) < 4096 and b"unknown request" in answer, answer[:200]
        r = _cli("status", path, env=env)
        assert r.returncode == 0 and "calc" in r.stdout, r.stdout + r.stderr
        r = _cli("stop", path, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert run.finish() == 0
    finally:
        for s in held:
            s.close()
        run.stop()


def test_commands_wait_for_room_in_a_full_admin_backlog(tmp_path, xdg):
    """A unix socket whose backlog is full refuses a connect that has a timeout at
    once (EAGAIN): while a local process kept the admin socket's backlog full
    (connecting as fast as it could, sending nothing), `wsuper stop` and `status`
    said 'no running system at ... (Resource temporarily unavailable)' and gave
    up.  They wait for room (up to their timeout), and then are answered."""
    import json
    import socket
    import threading
    path = _system(tmp_path)
    endpoint.private_dir(endpoint.runtime_dir())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(endpoint.admin_socket_path(path))
    listener.listen(0)
    queued = []
    while True:                                  # fill the backlog
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(endpoint.admin_socket_path(path))
        except BlockingIOError:
            s.close()
            break
        queued.append(s)
    assert queued

    def system():                                # a system slow to take connections
        time.sleep(0.3)
        for _ in range(len(queued) + 1):
            conn, _ = listener.accept()
            with conn:
                line = conn.makefile("rb").readline()
                if line:
                    conn.sendall(endpoint.encode({"ok": True, "text": "fine",
                                                  "system": json.loads(line)["system"]}))
    server = threading.Thread(target=system, daemon=True)
    server.start()
    try:
        for s in queued:
            s.setblocking(True)
            s.shutdown(socket.SHUT_WR)           # they send nothing: closed at once
        answer = endpoint.request(path, {"op": "status"}, timeout=10)
        assert answer["ok"] and answer["text"] == "fine"
    finally:
        for s in queued:
            s.close()
        server.join(10)
        listener.close()


def test_a_socket_someone_listens_on_is_never_taken_for_stale(tmp_path):
    """A review of start-up: `up` removes a socket left at its path by a system that
    was killed (nobody listens: ECONNREFUSED).  It removed one on *any* error of its
    probe: a live system whose backlog was full (EAGAIN: stopped with Ctrl-Z while
    clients kept connecting, or slower to accept than they connect) lost its socket
    to a second system given the same path, whose clients it then served.  Only a
    refused connection is stale; any other answer leaves the socket, refused."""
    import socket
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()                                    # bound, never listening: stale
    endpoint.claim_socket_path(stale)
    assert not os.path.lexists(stale)
    live = str(tmp_path / "live.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(live)
    listener.listen(1)
    clients = []
    try:
        while True:                              # fill its backlog, never accepted
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            clients.append(c)
            try:
                c.connect(live)
            except BlockingIOError:
                break
        # said at once, without waiting for room in the queue (it waited a second,
        # "no answer", on trio's thread too when a running system bound its socket
        # again: Supervisor._kept_bound)
        with pytest.raises(endpoint.EndpointError,
                           match=r"may be in use .*\(connecting to it: its queue of "
                                 r"connections is full\)"):
            endpoint.claim_socket_path(live)
        assert os.path.lexists(live)
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_a_socket_another_program_accepts_on_is_not_said_to_be_a_system(tmp_path):
    """A program that is not wsuper listening on the system's socket path: `up` said
    the path "is in use by a running system", and its user went looking for a system
    (an outside review, r251).  The error says something accepts there, a system or
    another program, and leaves the socket where it is."""
    import socket
    path = str(tmp_path / "other.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(8)
    try:
        with pytest.raises(endpoint.EndpointError) as e:
            endpoint.claim_socket_path(path)
        assert "something accepts connections on it" in str(e.value) and \
            "or another program" in str(e.value), str(e.value)
        assert os.path.lexists(path)
    finally:
        listener.close()


def test_a_second_system_on_the_socket_of_a_suspended_one_leaves_it_alone(tmp_path, xdg):
    """The same, end to end: system A is suspended (SIGSTOP, as Ctrl-Z) with its
    external socket's backlog full; system B, another file naming the same socket,
    is refused, and A, resumed, still answers on its socket."""
    import socket
    sock = str(tmp_path / "ext.sock")
    paths = []
    for name in ("a", "b"):
        path = tmp_path / name / "system.toml"
        path.parent.mkdir()
        path.write_text(f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nsocket = "{sock}"\n'
                        f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n'
                        f'exports = "Calc"\nexternal = true\n')
        paths.append(str(path))
    a = _up(paths[0])
    clients = []
    try:
        a.wait_for("ready calc")
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            while True:
                c = socket.socket(socket.AF_UNIX)
                c.setblocking(False)
                clients.append(c)
                try:
                    c.connect(sock)
                except BlockingIOError:
                    break
            r = _cli("up", paths[1])
            assert r.returncode == 2, r.stdout + r.stderr
            assert "may be in use" in r.stderr, r.stderr
        finally:
            for c in clients:
                c.close()
            os.kill(a.proc.pid, signal.SIGCONT)
        r = _cli("call", paths[0], "calc.add", "(a = 1, b = 2)")
        assert r.returncode == 0 and "sum = 3" in r.stdout, r.stdout + r.stderr
    finally:
        a.stop()


@pytest.mark.parametrize("shared", ["audit", "logs"])
def test_two_systems_never_write_one_audit_file_or_log_directory(tmp_path, xdg, shared):
    """A review of start-up: two systems (two system files) given one audit file ran
    side by side, interleaving their records, each rotating the file at its own
    count: the other's writes then went into a rotation, deleted at the next, lost
    without a word; given one log directory, the same with supervisor.log and a
    compartment's NAME.log.  The second is refused while the first runs (the file
    and the directory are locked, whatever the runtime directory; the kernel lets go
    at any end); once the first has stopped it runs."""
    paths = []
    for name in ("a", "b"):
        own = tmp_path / name
        own.mkdir(mode=0o700)
        audit = tmp_path / "audit.jsonl" if shared == "audit" else own / "audit.jsonl"
        logs = tmp_path / "logs" if shared == "logs" else own / "logs"
        (own / "system.toml").write_text(
            f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nsocket = "{own}/ext.sock"\n'
            f'audit = "{audit}"\nlogs = "{logs}"\n'
            f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n'
            f'exports = "Calc"\nexternal = true\n')
        paths.append(str(own / "system.toml"))
    a = _up(paths[0])
    try:
        a.wait_for("ready calc")
        r = _cli("up", paths[1], env={"XDG_RUNTIME_DIR": str(tmp_path)})
        assert r.returncode == 2, r.stdout + r.stderr
        key = "system.audit" if shared == "audit" else "system.logs"
        # FILE:LINE: KEY: (the line of the key, as `check` names it)
        line = 4 if shared == "audit" else 5
        assert f"{paths[1]}:{line}: {key}: " in r.stderr and "another running system" in r.stderr, \
            r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = _cli("call", paths[0], "calc.add", "(a = 1, b = 2)")
        assert r.returncode == 0 and "sum = 3" in r.stdout, r.stdout + r.stderr
    finally:
        a.stop()
    audit = tmp_path / ("audit.jsonl" if shared == "audit" else "a/audit.jsonl")
    records = [json.loads(line) for line in open(audit)]
    assert len({r["run"] for r in records}) == 1 and records[-1]["event"] == "run stopped"
    b = _up(paths[1])                  # the first has stopped: the second runs
    try:
        b.wait_for("ready calc")
    finally:
        b.stop()


_FAILS_ONCE_READY = r"""
import sys
import trio
from supervisor import runtime
from supervisor.cli import main

hear = runtime.Supervisor._run_zygote

async def run_zygote(self):
    # an internal error, once the system serves, in the task the system cannot go on
    # without (the one that hears the zygote, which starts every engine): it stops
    # the system, exit 1.  (A task's fault elsewhere cuts off only what it served,
    # or is carried on: Supervisor._bounded; this test raised it in _expire_calls,
    # which ended the supervisor then.)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hear, self)
        while not self._ready_at:
            await trio.sleep(0.01)
        self.say("the last line before the error")
        raise RuntimeError("an internal error, injected")
runtime.Supervisor._run_zygote = run_zygote
sys.exit(main(["up", sys.argv[1]]))
"""


@pytest.mark.parametrize("how", ["socket taken", "internal error"])
def test_every_run_the_audit_says_started_it_says_stopped(tmp_path, xdg, how):
    """An outside review of the audit's ends (r251): `run stopped` is each run's
    last record, on every way `up` ends once it has written `run started`.
    Refused as it bound the external socket (another program listens there: exit
    2), and ended by an error of its own (a traceback then; now a fault in a task
    the system cannot go on without, which stops it, exit 1), the audit kept `run
    started` alone: a run that never said it stopped, as if still going or killed."""
    import socket
    sock, audit = tmp_path / "ext.sock", tmp_path / "audit.jsonl"
    path = tmp_path / "system.toml"
    path.write_text(f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nsocket = "{sock}"\n'
                    f'audit = "{audit}"\nlogs = "{tmp_path}/logs"\n[compartments.calc]\n'
                    f'module = "{EXAMPLES}/calc.wat"\nexports = "Calc"\nexternal = true\n')
    other = socket.socket(socket.AF_UNIX)
    try:
        if how == "socket taken":
            other.bind(str(sock))          # a real listener of another program's
            other.listen()
            r = _cli("up", str(path))
            assert r.returncode == 2 and "in use" in r.stderr, r.stdout + r.stderr
        else:
            (tmp_path / "driver.py").write_text(_FAILS_ONCE_READY)
            r = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(path)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "an internal error, injected" in r.stderr, \
                r.stdout + r.stderr
    finally:
        other.close()
    records = [json.loads(line) for line in open(audit)]
    assert [r["event"] for r in records if "event" in r] == ["run started", "run stopped"], \
        records
    assert records[-1]["exit_code"] == (2 if how == "socket taken" else 1), records[-1]
    assert len({r["run"] for r in records}) == 1
    if how == "internal error":     # and the log files got what waited for them
        logged = (tmp_path / "logs" / "supervisor.log").read_text()
        assert "the last line before the error" in logged, logged


@pytest.mark.parametrize("first", ["audit", "logs"])
def test_one_systems_audit_is_never_another_running_systems_log_file(tmp_path, xdg, first):
    """A review of the operator's files: system a's `audit = "D/supervisor.log"`
    and system b's `logs = "D"`: both ran, whichever started first, and b appended
    its log lines to a's audit (a file of JSON records; a plugin's text among
    them), and would rotate it from under a at 1 MiB.  The second is refused,
    naming its key; the first runs on, its audit its own records only."""
    shared = tmp_path / "d"
    shared.mkdir(mode=0o700)
    paths = {}
    for name in ("a", "b"):
        own = tmp_path / name
        own.mkdir(mode=0o700)
        extra = f'audit = "{shared}/supervisor.log"\n' if name == "a" else \
            f'logs = "{shared}"\n'
        (own / "system.toml").write_text(
            f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nsocket = "{own}/ext.sock"\n'
            f'{extra}[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n'
            f'exports = "Calc"\nexternal = true\n')
        paths[name] = str(own / "system.toml")
    second = "b" if first == "audit" else "a"
    one = _up(paths["a" if first == "audit" else "b"])
    try:
        one.wait_for("ready calc")
        r = _cli("up", paths[second])
        assert r.returncode == 2, r.stdout + r.stderr
        key = "system.logs" if second == "b" else "system.audit"
        assert f"{paths[second]}:4: {key}: " in r.stderr and "another" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        one.stop()
    if first == "audit":
        records = [json.loads(line) for line in open(shared / "supervisor.log")]
        assert records[0]["event"] == "run started" and records[-1]["event"] == "run stopped"


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_a_runtime_directory_up_cannot_write_is_refused_and_said(tmp_path, how):
    """A review of start-up in hostile environments: the runtime directory (the
    system's lock, its admin socket) on a file system that is full, or read-only.
    Full, `up` said only "[Errno 28] No space left on device", exit 1, and left its
    lock file; read-only, exit 1 (a refusal before anything starts is 2), and
    `wsuper check` said 0.  Both are refused with 2, naming the lock; check refuses
    the read-only one too, and nothing is left there."""
    import subprocess as sp
    if os.geteuid() != 0:
        pytest.skip("mounts a small file system")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = sp.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=700", "tmpfs", str(mnt)],
               capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode()[:200]}")
    try:
        runtime = mnt / "rt" / "wsuper"
        runtime.mkdir(parents=True, mode=0o700)
        os.chmod(mnt / "rt", 0o700)
        if how == "full":
            fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 1024)
            except OSError:
                pass
            finally:
                os.close(fd)
        else:
            sp.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        path = _system(tmp_path / "sys")
        env = {"XDG_RUNTIME_DIR": str(mnt / "rt")}
        r = _cli("up", path, env=env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.startswith("wsuper: error: cannot ") and \
            f"the system's lock {endpoint.lock_path(path).replace(endpoint.runtime_dir(), str(runtime))}" \
            in r.stderr, r.stderr
        assert ("Read-only file system" if how == "read-only" else "No space left on device") \
            in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert os.listdir(runtime) == []
        if how == "read-only":
            r = _cli("check", path, env=env)
            assert r.returncode == 2 and "Read-only file system" in r.stderr, r.stderr
    finally:
        sp.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("command", ["call", "status", "probe"])
def test_commands_never_talk_to_a_socket_another_user_listens_on(tmp_path, xdg, command):
    """The socket's directory is checked by its path before the connect (ours,
    closed to others), and by the connect it may be another: a parent others may
    write to let them swap it for theirs in between (a real race, won about one
    time in thirty with a loop of renames).  What the client then reached was
    another user's socket, sent the call's parameters (or the admin request) and
    answered as the system.  The socket in the checked directory here is one
    another user listens on, as after such a swap: every command refuses it by
    the listener's uid (endpoint.check_peer), and sends it nothing."""
    if os.getuid() != 0:
        pytest.skip("a listener of another user needs root")
    import tempfile
    path = _system(tmp_path)
    text = open(path).read().replace('exports = "Calc"\n', 'exports = "Calc"\nexternal = true\n',
                                     1)
    with open(path, "w") as f:
        f.write(text)
    import socket
    theirs = tempfile.mkdtemp(prefix="wsuper-impostor-")
    os.chown(theirs, 65534, 65534)
    ready, told = os.pipe()
    pid = os.fork()
    if pid == 0:                                 # the other user's listener
        try:
            os.close(ready)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.bind(os.path.join(theirs, "s.sock"))
            s.listen(8)
            os.write(told, b"ready\n")
            while True:
                c, _ = s.accept()
                c.settimeout(2)
                try:
                    os.write(told, b"got %r\n" % c.recv(1 << 16))
                except OSError:
                    pass
                c.close()
        finally:
            os._exit(1)
    os.close(told)
    try:
        assert os.read(ready, 6) == b"ready\n"
        runtime = os.path.join(xdg, "wsuper")
        os.mkdir(runtime, 0o700)
        target = endpoint.default_socket_path(path) if command == "call" else \
            endpoint.admin_socket_path(path)
        os.rename(os.path.join(theirs, "s.sock"), target)     # the swapped-in socket
        args = {"call": ["call", path, "calc.add", "(a = 1234, b = 5678)"],
                "status": ["status", path], "probe": ["probe", path, "calc", "list"]}[command]
        r = _cli(*args, env={"XDG_RUNTIME_DIR": xdg})
        assert r.returncode != 0, (r.stdout, r.stderr)
        assert "held by uid 65534, not by you" in r.stderr, r.stderr
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        import shutil
        shutil.rmtree(theirs, ignore_errors=True)
    heard = b""
    os.set_blocking(ready, False)
    try:
        heard = os.read(ready, 1 << 16)
    except BlockingIOError:
        pass
    os.close(ready)
    assert b"got b'" not in heard.replace(b"got b''", b""), heard   # nothing was sent to it


def test_peer_problem_is_the_listeners_uid_alone():
    assert endpoint.peer_problem(1000, "/x.sock", 1000) is None
    assert endpoint.peer_problem(0, "/x.sock", 0) is None
    for peer, me in ((65534, 0), (0, 1000), (1001, 1000)):
        problem = endpoint.peer_problem(peer, "/x.sock", me)
        assert f"uid {peer}" in problem and "/x.sock" in problem


@pytest.mark.parametrize("when", ["before the probe", "after the probe"])
def test_a_socket_the_system_before_removes_as_it_stops_is_free(tmp_path, monkeypatch,
                                                                  when):
    """A review of start and stop: a second `up` on the socket of a system that is
    stopping (it removes its sockets as it goes).  Removed between up's look and its
    probe, the socket was said "may be in use by a running system (connecting to it:
    No such file or directory)", exit 2; removed between the probe (refused: nobody
    listens any more) and its unlink, up ended in "[Errno 2] No such file or
    directory".  Gone, the path is free."""
    import socket
    path = str(tmp_path / "e.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()                                     # bound, never listening: stale

    class Probe(socket.socket):
        def connect(self, address):
            if when == "before the probe":
                os.unlink(address)
            try:
                return super().connect(address)
            finally:
                if when == "after the probe":
                    os.unlink(address)
    monkeypatch.setattr(endpoint.pysocket, "socket", Probe)
    endpoint.claim_socket_path(path)
    assert not os.path.lexists(path)


def test_peer_creds_reads_the_kernels_ucred_with_uids_past_two_to_the_31():
    """struct ucred is (pid_t, uid_t, gid_t): uid and gid unsigned.  Read as three
    signed ints, a uid of 2**31 or more came out negative, never the user's own."""
    import struct
    for uid in (0, 1000, 65534, 2 ** 31, 3_000_000_000, 2 ** 32 - 2):
        raw = struct.pack("=iII", 4321, uid, uid)
        assert endpoint.peer_creds(raw) == (4321, uid, uid)
        assert endpoint.peer_problem(endpoint.peer_creds(raw)[1], "/x.sock", uid) is None
    with pytest.raises(ValueError):
        endpoint.peer_creds(b"\0" * 8)


_HIGH_UID_DRIVER = r"""
import json, os, subprocess, sys, time
path, root = sys.argv[1], sys.argv[2]
env = {**os.environ}
def cli(*args):
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=root,
                       capture_output=True, text=True, timeout=60, env=env)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr}
up = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "up", path], cwd=root,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
out = {"uid": os.getuid()}
try:
    for line in up.stdout:
        if "serving until" in line:
            break
    out["status"] = cli("status", path)
    out["call"] = cli("call", path, "calc.add", "(a = 2, b = 3)")
    out["probe"] = cli("probe", path, "calc", "list")
    out["stop"] = cli("stop", path)
    up.wait(timeout=30)
finally:
    if up.poll() is None:
        up.kill()
        up.wait()
print(json.dumps(out))
"""


def test_a_user_whose_uid_is_past_two_to_the_31_can_ask_their_own_system(tmp_path):
    """A review of the peer checks: SO_PEERCRED's uid was read as a signed int, so
    a user whose uid is 2**31 or more (directory services with id mapping, user
    namespaces) was told by `status`, `call`, `probe` and `stop` that their own
    running system's socket was "held by uid -1294967296, not by you", exit 1:
    such a system could not be stopped but by a signal.  Run in a user namespace
    that maps this user to uid 3000000000, every command reaches the system."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    probe = subprocess.run(["unshare", "-U", "--map-user=3000000000",
                            "--map-group=3000000000", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespace here: {probe.stderr!r}")
    path = _system(tmp_path / "sys")
    text = open(path).read().replace('exports = "Calc"\n', 'exports = "Calc"\nexternal = true\n',
                                     1)
    with open(path, "w") as f:
        f.write(text)
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    r = subprocess.run(["unshare", "-U", "--map-user=3000000000", "--map-group=3000000000",
                        sys.executable, "-c", _HIGH_UID_DRIVER, path, ROOT], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "XDG_RUNTIME_DIR": str(xdg),
                            "XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["uid"] == 3_000_000_000
    for command in ("status", "call", "probe", "stop"):
        assert out[command]["rc"] == 0, (command, out[command])
        assert "not by you" not in out[command]["err"], (command, out[command])
    assert "sum = 5" in out["call"]["out"], out["call"]


def test_the_runtime_directory_removed_while_the_system_runs_is_made_again(tmp_path, xdg):
    """A review of the operator's files: the runtime directory itself removed while
    the system ran (a cleaner of old files in /tmp takes /tmp/wsuper-UID with its
    sockets and lock; an `rm -rf` to make room): the sockets could not be bound
    again (`No such file or directory`, tried every second for good), and with the
    lock file gone `wsuper status`, `stop` and `call` said there was no running
    system; only a signal could stop it.  The directory is made again as at
    start (0700, ours), the lock file with it, and the sockets bound there."""
    import shutil as sh
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path)
    text = open(path).read().replace('exports = "Calc"\n', 'exports = "Calc"\nexternal = true\n',
                                     1)
    with open(path, "w") as f:
        f.write(text)
    r = _up(path, env)
    try:
        r.wait_for("all compartments ready")
        sh.rmtree(endpoint.runtime_dir())
        for what in ("the external socket", "the admin socket"):
            r.wait_for(what)
        said = [l for l in r.lines if "was removed or replaced while the system ran" in l]
        assert len(said) == 2 and all("listening there again" in l for l in said), \
            "\n".join(r.lines)
        assert os.stat(endpoint.runtime_dir()).st_mode & 0o777 == 0o700
        assert endpoint.is_running(path)
        s = _cli("status", path, env=env)
        assert s.returncode == 0 and "calc" in s.stdout, s.stdout + s.stderr
        c = _cli("call", path, "calc.add", "(a = 1, b = 2)", env=env)
        assert c.returncode == 0 and "sum = 3" in c.stdout, c.stdout + c.stderr
        s = _cli("stop", path, env=env)
        assert s.returncode == 0, s.stdout + s.stderr
        assert r.finish() == 0
        assert not os.path.exists(endpoint.lock_path(path))
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.finish()


def test_sockets_removed_while_the_system_runs_are_bound_again(tmp_path, xdg):
    """A review of the host running out: the runtime directory's sockets removed
    while the system ran (a cleaner of old files, an operator's rm to make room):
    the admin socket was gone for good, and `wsuper stop` waited for it (the
    system holds its lock) until it gave up, saying the system's `up` was stuck
    starting; the external socket took no client again.  Each is bound again at
    its path, said once, and stop and call reach the system."""
    env = {"XDG_RUNTIME_DIR": xdg}
    path = _system(tmp_path)
    text = open(path).read().replace('exports = "Calc"\n', 'exports = "Calc"\nexternal = true\n',
                                     1)
    with open(path, "w") as f:
        f.write(text)
    r = _up(path, env)
    try:
        r.wait_for("all compartments ready")
        os.remove(endpoint.admin_socket_path(path))
        os.remove(endpoint.default_socket_path(endpoint.identity(path)))
        for what in ("the external socket", "the admin socket"):
            r.wait_for(what)
        said = [l for l in r.lines if "was removed or replaced while the system ran" in l]
        assert len(said) == 2 and all("listening there again" in l for l in said), \
            "\n".join(r.lines)
        c = _cli("call", path, "calc.add", "(a = 1, b = 2)", env=env)
        assert c.returncode == 0 and "sum = 3" in c.stdout, c.stdout + c.stderr
        s = _cli("stop", path, env=env)
        assert s.returncode == 0, s.stdout + s.stderr
        assert r.finish() == 0
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.finish()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv(1) to play an ordinary user")
@pytest.mark.parametrize("command", ["up", "check"])
def test_a_runtime_directory_an_ordinary_user_cannot_make_is_named_with_what_to_do(command):
    """An ordinary user under `su` keeps root's XDG_RUNTIME_DIR (/run/user/0), where
    they can make nothing: `up` said "cannot make /run/user/0/wsuper: Permission
    denied" and `check` "cannot make /run/user/0" (a directory that is there),
    neither what that directory is nor what to do.  Both name the runtime
    directory, its path, and XDG_RUNTIME_DIR."""
    import tempfile
    there = tempfile.mkdtemp(prefix="wsuper-r178-")
    try:
        os.chmod(there, 0o755)
        roots = os.path.join(there, "run-user-0")       # root's, as /run/user/0
        os.mkdir(roots, 0o700)
        state = os.path.join(there, "state")
        os.mkdir(state, 0o700)
        os.chown(state, 65534, 65534)
        os.mkdir(os.path.join(there, "sys"), 0o755)
        path = os.path.join(there, "sys", "system.toml")
        with open(path, "w") as f:       # no schema: nothing to check in a child
            f.write(f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\n')
        os.chmod(path, 0o644)
        env = {**os.environ, "XDG_RUNTIME_DIR": roots, "XDG_STATE_HOME": state,
               "HOME": state}
        r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                            "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                            sys.executable, "-m", "supervisor.cli", command, path],
                           cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        if "Permission denied" in r.stderr and "runtime" not in r.stderr \
                and "wsuper" not in r.stderr:
            pytest.skip(f"cannot run as nobody here: {r.stderr.strip()[-200:]}")
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"cannot make the runtime directory {roots}/wsuper: Permission denied" \
            in r.stderr, r.stderr
        assert f"XDG_RUNTIME_DIR={roots}" in r.stderr and "/tmp/wsuper-65534" in r.stderr, \
            r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    finally:
        shutil.rmtree(there, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv(1) to play an ordinary user")
def test_an_engine_user_an_ordinary_user_cannot_use_is_said_not_passed_over():
    """`[system] engine_user` is used only by a wsuper running as root: run by an
    ordinary user, engines keep that user's uid, and the key written to keep them
    from every file and process of the operator's was passed over without a word,
    by `check` and by `up`.  Both say it (`up` as a note, `check` as a warning);
    as root, or with no such key, nothing is said."""
    import tempfile
    there = tempfile.mkdtemp(prefix="wsuper-r178-")
    try:
        os.chmod(there, 0o755)
        state = os.path.join(there, "state")
        os.mkdir(state, 0o700)
        os.chown(state, 65534, 65534)
        os.mkdir(os.path.join(there, "sys"), 0o755)
        path = os.path.join(there, "sys", "system.toml")
        env = {**os.environ, "XDG_RUNTIME_DIR": state, "XDG_STATE_HOME": state,
               "HOME": state}
        # root's own: beneath nobody's directory, root's runtime and log directories
        # are refused (endpoint.changeable_above)
        roots = os.path.join(there, "root-state")
        os.mkdir(roots, 0o700)
        root_env = {**os.environ, "XDG_RUNTIME_DIR": roots, "XDG_STATE_HOME": roots,
                    "HOME": roots}

        def check(user_line, *as_user, env=env):
            with open(path, "w") as f:       # no schema: nothing to check in a child
                f.write(f'[system]\n{user_line}\n[compartments.calc]\n'
                        f'module = "{EXAMPLES}/calc.wat"\n')
            os.chmod(path, 0o644)
            return subprocess.run([*as_user, sys.executable, "-m", "supervisor.cli", "check",
                                   path], cwd=ROOT, capture_output=True, text=True,
                                  timeout=60, env=env)

        nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all"]
        r = check('engine_user = "4242:4242"', *nobody)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stderr.strip() == (
            "wsuper: warning: [system] engine_user 4242:4242 is not used: wsuper does not run "
            "as root, so engines run as your uid (65534), each in a user namespace of its own "
            "(start wsuper as root for engines of that user)"), r.stderr
        r = check("", *nobody)
        assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
        r = check('engine_user = "4242:4242"', env=root_env)
        assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    finally:
        shutil.rmtree(there, ignore_errors=True)


@pytest.mark.parametrize("command", ["up", "check"])
def test_a_default_log_directory_that_cannot_be_made_says_what_moves_it(tmp_path, xdg,
                                                                        command):
    """A service user's HOME=/nonexistent (or a HOME one cannot write): the default
    log directory, ~/.local/state/wsuper/NAME-HASH, cannot be made, and `up` and
    `check` said only "cannot make log directory /nonexistent/.local/state/...:
    Permission denied", neither that it is the default nor what moves it.  Both
    say `logs` under [system], or XDG_STATE_HOME."""
    path = _system(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env.update(HOME="/proc/wsuper-no-home", XDG_RUNTIME_DIR=xdg)
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", command, path], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "log directory /proc/wsuper-no-home/.local/state/wsuper/" in line, line
    assert line.endswith("; it is the default log directory, in ~/.local/state/wsuper "
                         "(XDG_STATE_HOME is not set): set logs under [system] in the system "
                         "file, or XDG_STATE_HOME, to a directory of yours"), line
