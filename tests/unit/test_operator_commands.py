"""The operator's commands (supervisor/cli.py) against a system that answers but
does not do what it said, without processes: the admin socket faked."""
import os
import time

import pytest

from supervisor import cli, endpoint
from tests.conftest import read_line


def test_stop_of_a_system_that_says_it_stops_but_does_not_is_an_error(tmp_path, monkeypatch,
                                                                       capsys):
    """A review of the operator's commands: `wsuper stop` of a system that answered
    "stopping" and was still running when the wait ended printed "it has not
    stopped yet" on stdout and exited 0, as if it had stopped (`wsuper stop S &&
    wsuper up S` went on and found it running)."""
    path = tmp_path / "system.toml"
    path.write_text('[compartments.app]\nmodule = "app.wat"\n')
    monkeypatch.setattr(cli, "STOP_WAIT", 0.2)
    monkeypatch.setattr(endpoint, "is_running", lambda _p: True)
    state = endpoint.system_state(str(path))        # (decided before the fake lock)
    monkeypatch.setattr(endpoint, "system_state", lambda _p: state)
    monkeypatch.setattr(endpoint, "lock_holder", lambda _p: (True, 4242))
    monkeypatch.setattr(endpoint, "request", lambda _p, body, **kw: {
        "ok": True, "text": "stopping", "pid": 4242})
    assert cli.main(["stop", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "has not stopped within 0.2 s" in err and "pid 4242" in err
    # held by it still, by a holder that cannot be told yet, then by nobody
    holders = iter([(True, 4242), (True, None), (False, None)])
    monkeypatch.setattr(endpoint, "lock_holder", lambda _p: next(holders))
    assert cli.main(["stop", str(path)]) == 0
    assert capsys.readouterr().out == f"wsuper: stopped {path}\n"


def test_stop_looks_often_while_a_stop_is_young(tmp_path, monkeypatch, capsys):
    """`wsuper stop` looked every 50 ms whether the system had let go of its lock,
    while a small system's stop takes 20-100 ms: each stop waited ~25 ms more than
    the system took (the test suite runs hundreds).  It looks every 5 ms for the
    first second, then every 50 ms as before (a long stop costs no more looks)."""
    path = tmp_path / "system.toml"
    path.write_text('[compartments.app]\nmodule = "app.wat"\n')
    monkeypatch.setattr(endpoint, "is_running", lambda _p: True)
    state = endpoint.system_state(str(path))        # (decided before the fake lock)
    monkeypatch.setattr(endpoint, "system_state", lambda _p: state)
    monkeypatch.setattr(endpoint, "request", lambda _p, body, **kw: {
        "ok": True, "text": "stopping", "pid": 4242})
    monkeypatch.setattr(endpoint, "stopped", lambda _pid: False)
    clock = [1000.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    holders = iter([(True, 4242)] * 400 + [(False, None)])
    monkeypatch.setattr(endpoint, "lock_holder", lambda _p: next(holders))
    assert cli.main(["stop", str(path)]) == 0
    assert capsys.readouterr().out == f"wsuper: stopped {path}\n"
    assert max(slept[:20]) <= 0.005, slept[:20]         # the first 0.1 s of the stop
    assert max(slept[-20:]) == 0.05 and len(slept) == 400, (slept[-20:], len(slept))


def test_a_system_file_whose_path_is_not_utf8_has_its_sockets_lock_and_logs(
        tmp_path, monkeypatch, capsys):
    """A system file whose name (or any directory on its way) is not UTF-8 (a file
    from an archive, a Latin-1 name) ended every command but build and bindgen in
    a UnicodeEncodeError traceback: its sockets, lock and log directory are named
    by a hash of its path, taken of path.encode(), which refuses the surrogates a
    name that is not UTF-8 decodes to.  The hash is of the path's bytes as the
    file system has them (os.fsencode): a UTF-8 path hashes as it always did."""
    import os
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = os.fsencode(tmp_path) + b"/caf\xe9"          # Latin-1 on its way
    os.mkdir(folder)
    text = b'[compartments.app]\nmodule = "app.wat"\n'
    for name in (b"s\xff.toml", b"t\x1b[31m.toml"):
        with open(folder + b"/" + name, "wb") as f:
            f.write(text)
        path = os.fsdecode(folder + b"/" + name)
        sid = endpoint.system_id(path)
        assert sid == endpoint.system_id(path) and len(sid.rsplit("-", 1)[1]) == 8
        for where in (endpoint.default_socket_path, endpoint.admin_socket_path,
                      endpoint.lock_path):
            assert sid in where(path)
        assert not endpoint.is_running(path)
        for args in (["status", path], ["stop", path], ["revoke", path, "app.x"],
                     ["logs", path]):
            code = cli.main(args)
            out, err = capsys.readouterr()
            assert code in (1, 2), (args, out, err)
            assert err.startswith("wsuper: error: ") and "Traceback" not in err, (args, err)
    # a UTF-8 path keeps its name (a running system's sockets are still found)
    utf8 = "/srv/é/system.toml"
    import hashlib
    assert endpoint.system_id(utf8) == \
        "system-" + hashlib.sha256(utf8.encode()).hexdigest()[:8]


def test_admin_answers_show_a_name_from_the_request_escaped_once():
    """An answer naming what the request said (an unknown compartment, probe action,
    or op) escaped it and then quoted it with repr, which doubled every backslash:
    a compartment asked for as "a<ESC>b" was said as 'a\\\\x1bb', the name of one
    that holds a backslash and no escape at all; "a\\x1bb" (a real backslash)
    looked the same as a real escape would have.  Each is said once escaped: the
    two names are told apart, and no character reaches the terminal raw."""
    import json
    import types

    import trio

    from supervisor.prober import Prober
    from supervisor.runtime import Supervisor
    system = types.SimpleNamespace(compartments={"calc": None}, path="/s.toml")
    fake = types.SimpleNamespace(sup=types.SimpleNamespace(system=system), system=system,
                                 identity="/s.toml")
    sent = []

    class Stream:
        async def send_all(self, data):
            sent.append(json.loads(data))

    def answers(name):
        out = [trio.run(Prober.admin, fake, {"compartment": name, "action": "list"}),
               trio.run(Prober.admin, fake, {"compartment": "calc", "action": name}),
               trio.run(Supervisor._admin_answer, fake, *endpoint.take_request(json.dumps(
                   {"system": "/s.toml", "op": name}).encode()))]
        trio.run(Prober.trace, fake, Stream(), {"seconds": 1, "compartments": name})
        out.append(sent.pop())
        return [a["error"] for a in out]
    for escape, backslash in zip(answers("a\x1bb"), answers("a\\x1bb")):
        assert "'a\\x1bb'" in escape and "\\\\" not in escape, escape
        assert "'a\\\\x1bb'" in backslash, backslash
        assert escape.isprintable()


@pytest.mark.parametrize("value", ["run", "./x", "", "~/x"])
def test_a_relative_xdg_directory_is_ignored_not_taken_from_the_working_directory(
        monkeypatch, tmp_path, value):
    """An outside review: XDG_RUNTIME_DIR=run (or XDG_STATE_HOME=st) was taken as it
    was, a directory relative to each command's working directory: a system brought
    up in one directory was "no running system" to `wsuper status`, `stop`, `call`
    and `revoke` run in another, and `wsuper logs` found no logs of it.  The XDG
    Base Directory specification says a relative path is to be ignored."""
    from supervisor import endpoint
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", value)
    monkeypatch.setenv("XDG_STATE_HOME", value)
    assert endpoint.runtime_dir() == f"/tmp/wsuper-{os.getuid()}"
    assert endpoint.default_log_dir("s-1") == os.path.join(str(tmp_path), ".local", "state",
                                                          "wsuper", "s-1")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    assert endpoint.runtime_dir() == str(tmp_path / "run" / "wsuper")
    assert endpoint.default_log_dir("s-1") == str(tmp_path / "st" / "wsuper" / "s-1")


@pytest.mark.parametrize("command", [["call", "s.toml", "calc.add", "--timeout"],
                                     ["trace", "s.toml", "-o", "t.json", "--seconds"]])
def test_a_refused_number_of_seconds_is_told_the_range_it_missed(command, capsys):
    """`wsuper call --timeout 0` said "'0' is not a number of seconds from 0 to
    3600": 0 is refused, and the error named it as allowed."""
    from supervisor import cli
    for value in ("0", "-1", "nan", "3601"):
        with pytest.raises(SystemExit) as e:
            cli.main([*command, value])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"'{value}' is not a number of seconds more than 0 and at most " in err, err
        assert "from 0 to" not in err, err


def test_a_command_while_up_holds_its_lock_but_has_no_admin_socket_yet_waits_for_it(
        tmp_path, monkeypatch):
    """A review of the operator's commands against a system starting: `up` takes its
    lock, then (50 to 120 ms later, more on a busy machine) binds its admin socket.
    A `wsuper stop`, `status`, `revoke`, `probe` or `trace` in between found the
    system running (its lock held) and then said "no running system at
    ...admin.sock (No such file or directory)", exit 1, of a system that went on
    to run (`wsuper up S & wsuper stop S`: the stop failed, the system ran on).
    While the lock is held by a system past its start (its grants published), the
    socket is waited for (connect_admin); one still starting (nothing published:
    it reads, checks and compiles the system) is said so at once, SystemStarting,
    unless the command waits for the start (`call`, wait_start)."""
    import json
    import socket
    import threading
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "wsuper").mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    system = str(tmp_path / "system.toml")
    with open(system, "w") as f:
        f.write('[compartments.app]\nmodule = "app.wat"\n')
    # nothing runs: said at once, as before
    with pytest.raises(endpoint.EndpointError, match="no running system"):
        endpoint.request(system, {"op": "status"}, timeout=5)
    # a stale admin socket (a SIGKILLed up's) and no lock: nothing runs either
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(endpoint.admin_socket_path(system))
    stale.close()
    with pytest.raises(endpoint.EndpointError, match="no running system"):
        endpoint.request(system, {"op": "status"}, timeout=5)
    os.unlink(endpoint.admin_socket_path(system))
    lock = endpoint.Lock(system)
    lock.acquire()                       # `up` has its lock, not yet its socket
    with pytest.raises(endpoint.SystemStarting, match=r"is starting: its wsuper up \(pid "
                       + str(os.getpid())):
        endpoint.request(system, {"op": "status"}, timeout=20)
    assert endpoint.system_state(system) == endpoint.SystemState(endpoint.STARTING,
                                                                 os.getpid())
    lock.publish(set())                  # past its start: its socket comes next
    assert endpoint.system_state(system).kind == endpoint.RUNNING
    served = []

    def bind_later():
        import time
        time.sleep(0.3)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(endpoint.admin_socket_path(system))
            srv.listen()
            srv.settimeout(5)            # no client (the command gave up): not for ever
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    data += conn.recv(4096)
                served.append(json.loads(data))
                conn.sendall(endpoint.encode({"ok": True, "status": {},
                                              "system": endpoint.identity(system)}))
    t = threading.Thread(target=bind_later)
    t.start()
    try:
        answer = endpoint.request(system, {"op": "status"}, timeout=20)
    finally:
        t.join()
        lock.release()
    assert answer["ok"] and served[0]["op"] == "status"


def _schema_of_its_own(path, n: int):
    """The calc example's schema with ids of its own (a copy that keeps its ids is
    refused once the example's has been loaded in this process: Duplicate ID)."""
    path.write_text(f"""@0xf0e7afc40966{n:04x};
interface Calc @0xc0ffee00{n:04x}0001 {{
  add @0 (a :Int32, b :Int32) -> (sum :Int32);
}}
""")


def test_a_file_a_command_writes_is_never_one_of_the_systems_own(tmp_path, monkeypatch,
                                                                 capsys):
    """A review of the operator's commands: `wsuper check S --graph S` wrote the DOT
    graph over the system file (and said "wrote S", exit 0), `--graph calc.wat`
    over a module, and `wsuper trace S -o S` (or -o a schema, the audit file, a log
    file) over them while the system ran: an operator's slip lost the file.  Both
    refuse (exit 2) and leave it as it was."""
    import shutil

    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    for name in ("calc.wat", "hello.wat"):
        shutil.copy(os.path.join(EXAMPLES, name), tmp_path / name)
    _schema_of_its_own(tmp_path / "calc.capnp", 0xa1)
    (tmp_path / "shared.toml").write_text("")
    path = tmp_path / "system.toml"
    path.write_text(f'''[system]
schemas = ["calc.capnp"]
logs = "{tmp_path}/logs"
audit = "{tmp_path}/audit.jsonl"

[compartments.calc]
module = "calc.wat"
exports = "Calc"

[compartments.app]
module = "hello.wat"
[compartments.app.grants]
calc = {{ compartment = "calc" }}
log = {{ host = "log" }}
''')
    (tmp_path / "logs").mkdir(mode=0o700)
    (tmp_path / "logs" / "supervisor.log").write_text("line\n")
    (tmp_path / "audit.jsonl").write_text("{}\n")
    (tmp_path / "audit.jsonl.1").write_text("{}\n")
    own = ["system.toml", "calc.wat", "hello.wat", "calc.capnp", "audit.jsonl",
           "audit.jsonl.1", "logs/supervisor.log", "logs/new.dot"]
    before = {n: (tmp_path / n).read_bytes() for n in own if (tmp_path / n).exists()}
    for name in own:
        target = str(tmp_path / name)
        for args in (["check", str(path), "--graph", target],
                     ["trace", str(path), "--seconds", "1", "-o", target]):
            code = cli.main(args)
            out, err = capsys.readouterr()
            assert code == 2, (args, out, err)
            assert "not writing" in err and "wrote" not in out, (args, out, err)
    assert {n: (tmp_path / n).read_bytes() for n in own if (tmp_path / n).exists()} == before
    assert not (tmp_path / "logs" / "new.dot").exists()
    # through another name of it (a relative path, a symbolic link) all the same
    monkeypatch.chdir(tmp_path)
    os.symlink("system.toml", tmp_path / "link.toml")
    assert cli.main(["check", "system.toml", "--graph", "link.toml"]) == 2
    assert path.read_bytes() == before["system.toml"]
    # any other file is written
    capsys.readouterr()
    assert cli.main(["check", str(path), "--graph", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's files")
def test_a_file_a_command_writes_is_never_where_another_user_chooses(tmp_path, monkeypatch,
                                                                     capsys):
    """`wsuper check S --graph /tmp/g.dot` (and `trace -o`) as root, with another user's
    link /tmp/g.dot -> /opt/victim planted first (fs.protected_symlinks off, as on
    the machine of the review): the graph was written over /opt/victim, a file of
    root's, mode 0600, exit 0 "wrote /tmp/g.dot"; a file of theirs there (0666)
    was written for them to read; and in a directory anyone may write to without
    the sticky bit they could swap either in at any time.  Refused, exit 2, and
    the file the link leads to is left as it was."""
    import shutil

    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    shutil.copy(os.path.join(EXAMPLES, "calc.wat"), tmp_path / "calc.wat")
    path = tmp_path / "system.toml"
    path.write_text('[compartments.calc]\nmodule = "calc.wat"\n')
    victim = tmp_path / "victim"
    victim.write_text("root's\n")
    os.chmod(victim, 0o600)
    sticky, open_ = tmp_path / "sticky", tmp_path / "open"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)                  # as /tmp
    open_.mkdir()
    os.chmod(open_, 0o777)
    os.symlink(victim, sticky / "g.dot")
    os.lchown(sticky / "g.dot", 65534, 65534)
    (sticky / "theirs.dot").write_text("")
    os.chown(sticky / "theirs.dot", 65534, 65534)
    for target in (sticky / "g.dot", sticky / "theirs.dot", open_ / "g.dot"):
        for args in (["check", str(path), "--graph", str(target)],
                     ["trace", str(path), "--seconds", "1", "-o", str(target)]):
            code = cli.main(args)
            out, err = capsys.readouterr()
            assert code == 2 and "wrote" not in out, (args, out, err)
            assert "of uid 65534 (not you) in a directory anyone may write in" in err \
                or f"lies beneath {open_}, in which another user may rename" in err, err
    assert victim.read_text() == "root's\n"
    assert (sticky / "theirs.dot").read_text() == "" and not (open_ / "g.dot").exists()
    # one's own file in the sticky directory is written
    assert cli.main(["check", str(path), "--graph", str(sticky / "mine.dot")]) == 0
    assert (sticky / "mine.dot").read_text().startswith("digraph")


def test_a_file_a_command_writes_is_never_one_a_schema_imports_or_embeds(tmp_path, monkeypatch,
                                                                       capsys):
    """`wsuper check S --graph lib.capnp` (or `trace -o`), lib.capnp imported by the
    system's schema, wrote the graph over it, exit 0: the next `check` and `up` of
    S failed ("lib.capnp:1: Parse error"); an embedded file the same.  Refused, as
    the schema itself is, and left as it was."""
    import shutil

    from tests.conftest import EXAMPLES
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    shutil.copy(os.path.join(EXAMPLES, "calc.wat"), tmp_path / "calc.wat")
    (tmp_path / "lib.capnp").write_text("@0xd1e7afc40966bc31;\nstruct P { a @0 :Int32; }\n")
    (tmp_path / "blob.txt").write_text("blob\n")
    (tmp_path / "calc.capnp").write_text(
        '@0xf0e7afc40966bcb1;\nusing L = import "lib.capnp";\n'
        'const blob :Text = embed "blob.txt";\n'
        "interface Calc @0xc0ffee00bcb10001 {\n  add @0 (a :Int32, b :Int32) -> (sum :Int32);\n}\n")
    path = tmp_path / "system.toml"
    path.write_text('[system]\nschemas = ["calc.capnp"]\n[compartments.calc]\n'
                    'module = "calc.wat"\nexports = "Calc"\n')
    for name in ("lib.capnp", "blob.txt"):
        before = (tmp_path / name).read_bytes()
        for args in (["check", str(path), "--graph", str(tmp_path / name)],
                     ["trace", str(path), "--seconds", "1", "-o", str(tmp_path / name)]):
            code = cli.main(args)
            out, err = capsys.readouterr()
            assert code == 2 and "not writing" in err and "wrote" not in out, (args, out, err)
        assert (tmp_path / name).read_bytes() == before
    assert cli.main(["check", str(path)]) == 0


def test_a_request_the_system_would_not_take_is_refused_naming_the_argument(
        tmp_path, monkeypatch, capsys):
    """A review of the operator's commands: `wsuper revoke S` of a grant name of
    70,000 characters (or `wsuper probe ... --functions` holding 65 brackets) was
    sent; the system read its first 64 KiB (or counted the brackets), and the
    command said "expected one JSON object on one line", exit 1: a protocol error,
    not its own argument.  It is refused before anything is sent, saying why."""
    import socket
    import threading
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run" / "wsuper").mkdir(mode=0o700, parents=True)
    system = str(tmp_path / "system.toml")
    with open(system, "w") as f:
        f.write('[compartments.app]\nmodule = "app.wat"\n')
    lock = endpoint.Lock(system)
    lock.acquire()
    got, done = [], threading.Event()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(endpoint.admin_socket_path(system))
    srv.listen()
    srv.settimeout(5)

    def serve():                         # answers as the system does
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            if done.is_set():
                conn.close()
                return
            with conn:
                data = b""
                while b"\n" not in data and len(data) < endpoint.ADMIN_LINE_LIMIT:
                    chunk = conn.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                got.append(data)
                try:
                    endpoint.decode(data.partition(b"\n")[0])
                    answer = {"ok": False, "error": "no revocable grant"}
                except ValueError:
                    answer = {"ok": False, "error": "expected one JSON object on one line"}
                conn.sendall(endpoint.encode({**answer, "system": endpoint.identity(system)}))
    t = threading.Thread(target=serve)
    t.start()
    try:
        assert cli.main(["revoke", system, "app." + "x" * 70000]) == 1
        err = capsys.readouterr().err
        assert "an argument is too long" in err and "JSON" not in err, err
        assert got == []                 # nothing was sent
        # brackets inside text are text: the system decides on the parsed request
        # (endpoint.parse_request), which no longer counts them in the raw line (r268)
        for args in (["revoke", system, "app.x"], ["revoke", system, "app." + "[" * 65]):
            assert cli.main(args) == 1
            assert "no revocable grant" in capsys.readouterr().err
        assert len(got) == 2
    finally:
        done.set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
            wake.connect(endpoint.admin_socket_path(system))       # its accept returns
        t.join()
        srv.close()
        lock.release()


def _system_with_its_own_runtime(tmp_path, monkeypatch) -> str:
    """A system file of one compartment, and a private XDG_RUNTIME_DIR for it."""
    run = tmp_path / "run"
    (run / "wsuper").mkdir(mode=0o700, parents=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    system = str(tmp_path / "system.toml")
    with open(system, "w") as f:
        f.write('[compartments.app]\nmodule = "app.wat"\n')
    return system


def test_a_second_up_beside_the_first_names_its_pid(tmp_path, monkeypatch):
    """A review of the operator's commands: two `wsuper up` of one system started at
    once; the second found the lock held and read the file for the holder's pid
    before the holder had written it (it writes it just after taking the lock):
    "this system is already running (pid ?)".  The file is looked at again, a
    moment apart, until the pid is there."""
    import fcntl
    system = _system_with_its_own_runtime(tmp_path, monkeypatch)
    holder = os.open(endpoint.lock_path(system), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)        # the first up: locked, its pid not yet written
    pauses = []

    def pause():                              # meanwhile, it writes its pid
        pauses.append(1)
        if len(pauses) == 2:
            os.pwrite(holder, b"4242\n", 0)
    monkeypatch.setattr(endpoint, "_pause", pause)
    try:
        with pytest.raises(endpoint.EndpointError, match=r"already running \(pid 4242\)"):
            endpoint.Lock(system).acquire()
    finally:
        os.close(holder)


def test_ctrl_c_before_the_commands_own_handler_is_one_line_not_a_traceback(
        monkeypatch, capsys):
    """A review of the operator's commands: Ctrl-C 50 ms after `wsuper call ...`
    was typed ended in a KeyboardInterrupt traceback (in `import argparse`, which
    cli.py made before main), and one while main set up the descriptors and made
    its first imports, before its try, the same: README says Ctrl-C on any command
    is one line and exit code 130.  main catches it around everything it does,
    and importing cli imports nothing more than it needs."""
    import subprocess
    import sys

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_standard_descriptors", interrupted)
    assert cli.main(["status", "system.toml"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == ("wsuper: interrupted (SIGINT); a request already sent to "
                                 "the system may still be carried out\n"), err
    # a command that sends no system anything says so of none (it said it of `build`)
    for command in (["build", "p.c", "-o", "p.wasm"], ["check", "system.toml"],
                    ["bindgen", "s.capnp", "-o", "out"], ["logs", "system.toml"]):
        assert cli.main(command) == 130
        assert capsys.readouterr() == ("", "wsuper: interrupted (SIGINT)\n"), command
    # what the `wsuper` script imports before main runs: no argparse (its own
    # imports, gettext among them, were the widest part of that window)
    code = ("import sys; before = set(sys.modules); import supervisor.cli; "
            "print(sorted(set(sys.modules) - before))")
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "argparse" not in new and "gettext" not in new, new


def test_call_asks_where_the_socket_is_within_its_own_timeout(tmp_path, monkeypatch,
                                                              capsys):
    """`wsuper call --timeout 0.5` asked the running system where its external
    socket is with the admin commands' 30 s: a system that holds its lock but has
    not opened its admin socket (starting, or stuck starting: connect_admin waits
    for it) held the call 30 s past its --timeout."""
    import shutil

    from tests.conftest import EXAMPLES
    shutil.copy(os.path.join(EXAMPLES, "calc.wat"), tmp_path / "calc.wat")
    _schema_of_its_own(tmp_path / "calc.capnp", 0xa2)
    path = tmp_path / "system.toml"
    path.write_text('[system]\nschemas = ["calc.capnp"]\n[compartments.calc]\n'
                    'module = "calc.wat"\nexports = "Calc"\nexternal = true\n')
    asked = []

    def request(_p, body, timeout=endpoint.ADMIN_ANSWER_TIMEOUT, **_kw):
        asked.append((body["op"], timeout))
        raise endpoint.EndpointError("no answer")
    monkeypatch.setattr(endpoint, "is_running", lambda _p: True)
    monkeypatch.setattr(endpoint, "request", request)
    from supervisor import client

    def call(*a, **kw):
        raise client.CallFailed("cannot connect to it")
    monkeypatch.setattr(client, "call", call)
    assert cli.main(["call", str(path), "calc.add", "(a = 1, b = 2)", "--timeout", "0.5"]) == 1
    assert asked == [("socket", 0.5)]


def test_up_holds_the_systems_lock_while_it_reads_checks_and_compiles_it(
        tmp_path, monkeypatch, capsys):
    """A review of the operator's commands: `up` took the system's lock only once
    its file was read, checked and compiled (~300 ms for a small system, seconds
    for a large one); a `wsuper stop` meanwhile found no system running, said so
    (exit 1), and the system then ran on (`wsuper up S & sleep 0.2; wsuper stop S`
    left S running).  The lock is taken first (a stop then waits for the admin
    socket: connect_admin), and let go when `up` is refused."""
    from supervisor import policy, preflight
    system = _system_with_its_own_runtime(tmp_path, monkeypatch)
    seen = []

    def prepare(_system, *_rest):
        seen.append(endpoint.is_running(system))
        raise policy.PolicyError(system, "compartments.app.module", "refused here")
    monkeypatch.setattr(preflight, "prepare", prepare)
    monkeypatch.setattr(policy, "load", lambda path, socket=None: None)
    # the steps between load and prepare (the early compiles and checks), for no system
    from supervisor import launch
    monkeypatch.setattr(launch.Launched, "compile_soon", lambda self, system: None)
    monkeypatch.setattr(preflight, "ChecksSoon", lambda system: None)
    assert cli.main(["up", system]) == 2
    assert "refused here" in capsys.readouterr().err
    assert seen == [True]                        # held while it was checked
    assert not endpoint.is_running(system)       # and let go with the refusal
    assert not os.path.lexists(endpoint.lock_path(system))


def test_the_running_systems_revocable_grants_are_known_beside_its_lock_and_only_its(
        tmp_path, monkeypatch):
    """`wsuper revoke` of a grant the running system does not have is refused without
    asking it (a stopped system held it 30 s): the system publishes its revocable
    grants beside its lock (Lock.publish), read back only while the lock is held and
    only if the file names the lock's holder; gone with the system."""
    import json
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run" / "wsuper").mkdir(mode=0o700, parents=True)
    system = str(tmp_path / "system.toml")
    with open(system, "w") as f:
        f.write('[compartments.app]\nmodule = "app.wat"\n')
    assert endpoint.running_grants(system) is None             # nothing runs
    with open(endpoint.grants_path(system), "w") as f:         # a SIGKILLed run's, our pid
        json.dump({"pid": os.getpid(), "revocable": ["app.old"]}, f)
    lock = endpoint.Lock(system)
    lock.acquire()
    try:
        assert endpoint.running_grants(system) is None         # runs, published nothing
        lock.publish({"app.b", "app.a"})
        assert endpoint.running_grants(system) == ["app.a", "app.b"]
        with open(endpoint.grants_path(system), "w") as f:     # another pid's: not its
            json.dump({"pid": 1, "revocable": ["app.x"]}, f)
        assert endpoint.running_grants(system) is None
        with open(endpoint.grants_path(system), "w") as f:
            f.write("[[[")
        assert endpoint.running_grants(system) is None
        lock.publish({"app.a"}, ["app"])
        assert endpoint.running_facts(system) == {"revocable": ["app.a"],
                                                  "compartments": ["app"]}
        assert cli.main(["revoke", system, "app.nope"]) == 2   # refused here: nothing asked
        assert cli.main(["probe", system, "nope", "list"]) == 1
    finally:
        lock.release()
    assert not os.path.exists(endpoint.grants_path(system))
    assert endpoint.running_grants(system) is None


def test_check_loads_no_event_loop():
    """`wsuper check` starts nothing, and so imports no trio: it did, for the default
    log directory's name (output.py), ~0.1 s of each check (docs/performance.md,
    "The operator's commands")."""
    import subprocess
    import sys

    from tests.conftest import EXAMPLES, ROOT
    code = ("import sys\nfrom supervisor import cli\nsys.argv = ['wsuper', 'check', sys.argv[1]]\n"
            "try:\n    cli.main()\nfinally:\n"
            "    print('loaded:', sorted(m for m in ('trio', 'supervisor.output', "
            "'supervisor.runtime') if m in sys.modules), file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code, os.path.join(EXAMPLES, "hello.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "holds nothing" in r.stdout, r.stdout + r.stderr          # it checked the system
    assert "loaded: []" in r.stderr, r.stderr


@pytest.mark.parametrize("held, pid, process, published, accepting, kind", [
    (False, None, None, False, False, endpoint.NOT_RUNNING),
    (True, 7, "S", False, False, endpoint.STARTING),       # reading, compiling
    (True, 7, "R", True, False, endpoint.RUNNING),         # its socket comes next (again)
    (True, 7, "S", False, True, endpoint.RUNNING),         # answering
    (True, 7, "T", True, True, endpoint.SUSPENDED),        # SIGSTOP, Ctrl-Z
    (True, 7, "t", False, False, endpoint.SUSPENDED),      # a tracer's stop
    (True, None, None, False, False, endpoint.RUNNING),    # not seen from here: asked
])
def test_the_state_of_a_system_is_decided_in_one_place(held, pid, process, published,
                                                       accepting, kind):
    """endpoint.decide_state (pure): what every operator's command takes a system to
    be, from what is seen of its lock, its `up` and its admin socket."""
    state = endpoint.decide_state(held, pid, process, published, accepting)
    assert state.kind == kind
    assert state.pid == (pid if held else None)


_SILENT_LISTENER = """
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen()
print("listening", flush=True)
conn, _ = s.accept()
data = b""
while not data.endswith(b"\\n"):
    data += conn.recv(4096)
print("asked", flush=True)
time.sleep(120)
"""


def _silent_listener(tmp_path, monkeypatch):
    """A real process listening on the admin socket of a system file that reads its
    request and never answers."""
    import subprocess
    import sys
    system = _system_with_its_own_runtime(tmp_path, monkeypatch)
    proc = subprocess.Popen([sys.executable, "-c", _SILENT_LISTENER,
                             endpoint.admin_socket_path(system)],
                            stdout=subprocess.PIPE, text=True)
    # The socket file appears at bind(), before listen(): a connection then is
    # refused.  The listener says when it listens.
    assert read_line(proc).strip() == "listening"
    return system, proc


def test_an_up_stopped_after_it_was_asked_is_said_at_once_not_waited_for(tmp_path,
                                                                         monkeypatch):
    """A system whose `up` was stopped (SIGSTOP, Ctrl-Z) once it had the request held
    the command for all of its wait (30 s), then "did not answer"; it is seen
    stopped while the answer is awaited and said so at once, the request sent."""
    import signal
    import threading
    system, proc = _silent_listener(tmp_path, monkeypatch)
    try:
        def stop_when_asked():
            assert read_line(proc, 600).strip() == "asked"
            os.kill(proc.pid, signal.SIGSTOP)
        t = threading.Thread(target=stop_when_asked)
        t.start()
        with pytest.raises(endpoint.SystemSuspended) as e:
            endpoint.request(system, {"op": "status"}, timeout=600)
        t.join()
        assert e.value.pid == proc.pid
        assert f"its wsuper up (pid {proc.pid}) is stopped" in str(e.value)
        assert "the request was sent, and may be carried out then" in str(e.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_command_waiting_for_an_answer_says_so(tmp_path, monkeypatch):
    """A system that does not answer (too busy; hung) held `status`, `stop`, `revoke`
    and `call` up to 30 s without a word: once WAIT_NOTICE has passed, the command
    says that it waits, and for how long at most."""
    monkeypatch.setattr(endpoint, "WAIT_NOTICE", 0.1)
    system, proc = _silent_listener(tmp_path, monkeypatch)
    said = []
    try:
        with pytest.raises(endpoint.EndpointError, match="did not answer"):
            endpoint.request(system, {"op": "status"}, timeout=3, notice=said.append)
    finally:
        proc.kill()
        proc.wait()
    assert said == [f"waiting for {system} (pid {proc.pid}) to answer: it has not in "
                    f"0.1 s; at most 3 s in all"], said


def test_a_process_on_the_admin_socket_that_is_not_the_systems_up_is_not_asked(
        tmp_path, monkeypatch):
    """A socket file left by another process of the user's at the system's admin
    socket (one that takes connections and never answers), while the system's `up`
    holds the lock: the command sent its request there, waited all of its wait and
    said "did not answer".  Only the process that holds the lock listens there: any
    other is refused at once, nothing sent."""
    system, proc = _silent_listener(tmp_path, monkeypatch)
    lock = endpoint.Lock(system)
    lock.acquire()
    lock.publish(set())
    try:
        with pytest.raises(endpoint.EndpointError, match=(
                rf"listened on by process {proc.pid}, not by the system's wsuper up "
                rf"\(pid {os.getpid()}, which holds its lock\): nothing was sent")):
            endpoint.request(system, {"op": "status"}, timeout=20)
    finally:
        lock.release()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("seen, said", [
    (["t", "t", "S"], "S"),          # strace: a stop at each system call, a moment each
    (["T", "R"], "R"),               # continued just after
    (["S"], "S"),
    (["t"] * 10, "t"),               # a debugger's: stays
    (["T"] * 10, "T"),               # SIGSTOP, Ctrl-Z: stays
])
def test_a_process_is_said_stopped_only_when_it_stays_stopped(monkeypatch, seen, said):
    """An outside review: under strace, a running `wsuper up` read 't' at the
    moment a command looked, and `status` said it was stopped (6 of 15), and
    `stop` sent nothing.  A process seen stopped is looked at again, and said
    stopped only if it is each time."""
    looks = iter(seen)
    monkeypatch.setattr(endpoint, "process_state", lambda pid: next(looks))
    monkeypatch.setattr(endpoint, "STOP_LOOK_GAP", 0)
    assert endpoint.settled_state(1234) == said
    assert next(looks, None) is None                  # looked at no more than it took
    looks = iter(seen)
    assert endpoint.stopped(1234) == (said in "Tt")


def test_a_stopped_process_is_said_stopped(tmp_path):
    """The real thing: a child stopped with SIGSTOP is, and continued it is not."""
    import signal
    import subprocess
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert not endpoint.stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while endpoint.process_state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoint.stopped(child.pid)
        os.kill(child.pid, signal.SIGCONT)
        while endpoint.process_state(child.pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not endpoint.stopped(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_stop_knows_the_up_it_asked_from_a_new_one_only_when_both_pids_are_known():
    from supervisor.endpoint import another_holds
    assert another_holds(100, 200)
    assert not another_holds(100, 100)            # still the one asked
    assert not another_holds(100, None)           # its holder cannot be told yet
    for asked in (None, True, 0, -1, "100"):      # no pid (or a nonsense one) answered
        assert not another_holds(asked, 200)


def test_a_graph_that_cannot_be_written_whole_leaves_the_old_one(tmp_path):
    """An outside review (r266, left to r268): `check --graph FILE` opened FILE to
    write ("w"), emptying it, and a write that then failed (a full disk; here the
    file-size limit, which fails it the same way) left the part that fitted, the
    old graph lost.  The graph is written beside it and renamed over it once whole
    (outfile.replacing): the old file is kept as it was, nothing left beside it;
    a FIFO no process reads is refused at once, not waited on."""
    import resource
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) '
                                    '(func (export "_start")))')
    (tmp_path / "s.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    path = str(tmp_path / "s.toml")
    graph = tmp_path / "g.dot"
    graph.write_text("an older graph\n")

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past it fails, EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (40, 40))
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "check", path, "--graph",
                        str(graph)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       preexec_fn=small_files)
    assert r.returncode == 1 and r.stderr.endswith(
        f"wsuper: error: --graph {graph}: cannot write the graph: File too large\n"), r.stderr
    assert graph.read_text() == "an older graph\n"
    assert sorted(os.listdir(tmp_path)) == ["g.dot", "m.wat", "s.toml"]
    fifo = tmp_path / "g.fifo"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "check", path, "--graph",
                        str(fifo)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "is a FIFO that no process reads" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "check", path, "--graph",
                        str(graph)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and graph.read_text().startswith("digraph"), r.stderr
