"""A compromised engine in a live system, beside honest neighbours.

The threat model lets a guest escape wasmtime and run native code in its engine.
tests/hostile.py runs the real `wsuper up`, whose real zygote forks a real,
confined engine for compartment `evil`; once the supervisor has started it (and
said it is ready), the engine runs attacker code (a payload, Python: ctypes
makes any system call) with its socket, its stderr and its confinement.  Each
test then checks what a user would notice: the supervisor is up, `calc` (an
honest neighbour, reached by an external pycapnp client) still answers, the
operator is told what happened, naming `evil`, and nothing the engine wrote
reached the terminal as a line of its own."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from compartments.limits import Limits
from supervisor import router as R
from tests.conftest import EXAMPLES, ROOT, Running
from tests.integration.test_fail_closed import _add, _supervisor

SYSTEM = """
[system]
schemas = ["{examples}/calc.capnp"]
socket = "{tmp}/ext.sock"
logs = "{tmp}/logs"
audit = "{tmp}/audit.jsonl"

[compartments.calc]
module = "{examples}/calc.wat"
exports = "Calc"
external = true

[compartments.evil]
module = "{examples}/calc.wat"
exports = "Calc"
max_restarts = 1

[compartments.evil.grants]
calc = {{ compartment = "calc" }}
"""

#: What every payload begins with: raw messages (rpc.Message, framed as is), calls
#: to calc through the engine's own books, and a line on its stderr.
PRELUDE = """
import os, struct, sys, time
from capnp_schemas import protocol as P, rpc, wire
from capnp_schemas.protocol import Content
CALC = 0xC0FFEE0000000001
calc = engine.grants["calc"][1].import_id
conn = engine.conn
def log(*a): print(*a, file=sys.stderr, flush=True)
def add(a, b): return Content.standalone([struct.pack("<Qii", 1 << 32, a, b)])
def raw(m): return wire.frame(m.to_segments())
"""


class Hostile(Running):
    """`wsuper up SYSTEM` with the payloads of directory `payloads` (tests/hostile.py)."""

    def __init__(self, payloads: str, system: str, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hostile", payloads, "up", system], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.lines: list[str] = []
        self._unread = b""


@pytest.fixture
def hostile(tmp_path):
    started = []

    def up(payload: str):
        (tmp_path / "payloads").mkdir()
        (tmp_path / "payloads" / "evil.py").write_text(PRELUDE + textwrap.dedent(payload))
        (tmp_path / "system.toml").write_text(SYSTEM.format(examples=EXAMPLES, tmp=tmp_path))
        run = Hostile(str(tmp_path / "payloads"), str(tmp_path / "system.toml"))
        started.append(run)
        run.wait_for("all compartments ready")
        return run, str(tmp_path / "ext.sock")

    yield up
    for run in started:
        run.stop()


def _neighbours_unharmed(run, sock, before=None):
    assert run.proc.poll() is None, "\n".join(run.lines)
    assert _add(sock, 20, 22) == 42
    if before is not None:
        fds, rss = _supervisor(run.proc.pid)
        assert fds <= before[0] + 2 and rss <= before[1] + 40 * 1024, (fds, rss, before)


def _no_line_of_its_own(run):
    """Every line is the supervisor's own, or one of evil's, prefixed: none begins
    with what the engine wrote (an escape sequence, a forged `wsuper:` line)."""
    for line in run.lines:
        assert line.startswith(("wsuper: ", "[evil] ", "[calc] ")), line
        assert "\x1b" not in line and "\r" not in line, line


def test_an_engine_that_aborts_its_connection_is_said_naming_its_compartment(
        hostile, tmp_path):
    """An honest engine aborts only after saying why on its stderr (a protocol error
    of the supervisor's, out of memory); a taken-over one that sent Abort and said
    nothing left the operator "restarting evil (engine killed by SIGKILL)": the
    supervisor's kill, not why.  Its reason is said, one line, escaped, and audited."""
    run, sock = hostile("""
        send(conn.send_abort("\\x1b[31mwsuper: compartment calc crashed\\n" + "A" * 100000))
        time.sleep(5)
    """)
    line = run.wait_for("evil: the engine aborted the connection")
    assert line.endswith(r"aborted the connection: \x1b[31mwsuper: compartment calc crashed")
    line = run.wait_for("restarting evil")
    assert r"(engine cut off: it aborted the connection: \x1b[31mwsuper: compartment calc " \
        "crashed; restart 1" in line, line
    _neighbours_unharmed(run, sock)
    run.stop()
    _no_line_of_its_own(run)
    records = [json.loads(r) for r in open(tmp_path / "audit.jsonl")]
    assert {"peer": "evil", "event": "connection aborted by the engine",
            "reason": "\x1b[31mwsuper: compartment calc crashed"}.items() <= \
        next(r for r in records if r.get("peer") == "evil").items()


def test_an_engine_that_exits_with_answers_unread_is_said_to_have_exited(hostile):
    """An engine that exits (0) with an answer the supervisor wrote to it unread:
    the supervisor's read of its socket fails ECONNRESET, and the operator read
    "restarting evil in 0.1 s (engine Connection reset by peer; ...)": the
    socket's words pasted after "engine".  It exited, and how its connection
    ended is said after it, as an external client's is."""
    run, sock = hostile("""
        _q, data = conn.send_call(calc, CALC, 0, add(1, 2))
        send(data)
        time.sleep(1)                  # calc's answer arrives, and is never read
    """)
    line = run.wait_for("restarting evil")
    assert "(engine exited (Connection reset by peer); restart 1" in line, line
    _neighbours_unharmed(run, sock)


#: Messages that break the protocol, each sent by the engine once it is running:
#: (the payload, what the supervisor's line says).  Each cuts off evil alone.
BREAKS = {
    "garbage": ('send(b"\\xff" * 64)', "bad framing: message has 4294967296 segments"),
    "a segment table of 16 GiB, then silence": (
        'send(struct.pack("<II", 0, 1 << 31))', "exceeds the limit of 67108864 bytes"),
    "a Return for a question never asked": ("""
        m = rpc.Message.new_message(); r = m.init("return"); r.answerId = 12345
        r.init("results"); send(raw(m))""", "return for question 12345, which is not awaiting"),
    "a second answer to Engine.start": ("""
        m = rpc.Message.new_message(); r = m.init("return"); r.answerId = 0
        r.init("results"); send(raw(m))""", "return for question 0, which is not awaiting"),
    "a call on an import it was never given": ("""
        m = rpc.Message.new_message(); c = m.init("call"); c.questionId = 9
        c.interfaceId = CALC; c.target.importedCap = calc + 7; c.init("params")
        send(raw(m))""", "was never issued or was released"),
    "capabilities of others named in its cap table (receiverHosted)": ("""
        m = rpc.Message.new_message(); c = m.init("call"); c.questionId = 9
        c.interfaceId = CALC; c.methodId = 2; c.target.importedCap = calc
        t = c.init("params").init("capTable", 2); t[0].receiverHosted = calc
        t[1].receiverHosted = calc + 1; send(raw(m))""", "was never issued or was released"),
    "an answer of the supervisor's it was never given (receiverAnswer)": ("""
        m = rpc.Message.new_message(); c = m.init("call"); c.questionId = 9
        c.interfaceId = CALC; c.methodId = 2; c.target.importedCap = calc
        c.init("params").init("capTable", 1)[0].init("receiverAnswer").questionId = 0
        send(raw(m))""", "promisedAnswer names unknown question 0"),
    "a Release of more references than it holds": ("""
        m = rpc.Message.new_message(); r = m.init("release"); r.id = calc
        r.referenceCount = 1 << 31; send(raw(m))""", "references to export"),
    "a Finish of a question never asked": ("""
        m = rpc.Message.new_message(); m.init("finish").questionId = 4242
        send(raw(m))""", "4242"),
}


@pytest.mark.parametrize("what", list(BREAKS))
def test_what_breaks_the_protocol_from_a_taken_over_engine_cuts_off_that_engine_only(
        hostile, what):
    payload, said = BREAKS[what]
    run, sock = hostile(textwrap.dedent(payload) + "\ntime.sleep(5)\n")
    before = _supervisor(run.proc.pid)
    line = run.wait_for("evil: protocol error, connection aborted")
    assert said in line, line
    # the reason it ended is that: not the supervisor's kill that followed ("engine
    # killed by SIGKILL"), in the restart line, to its callers, as a last reason
    line = run.wait_for("restarting evil")
    assert "(engine cut off: protocol error: " in line and said in line, line
    _neighbours_unharmed(run, sock, before)
    run.stop()
    _no_line_of_its_own(run)


def test_messages_the_supervisor_does_not_implement_are_echoed_and_the_engine_goes_on(
        hostile):
    """Provide, Accept, Join (level 3/4) and a Disembargo for `accept`: the
    `unimplemented` echo, each, and the engine's calls still go through."""
    run, sock = hostile("""
        import socket
        for kind in ("provide", "accept", "join"):
            m = rpc.Message.new_message(); x = m.init(kind); x.questionId = 50
            if kind != "accept":
                x.target.importedCap = calc
            send(raw(m))
        m = rpc.Message.new_message(); d = m.init("disembargo")
        d.target.importedCap = calc; d.context.accept = None; send(raw(m))
        qid, data = conn.send_call(calc, CALC, 0, add(40, 2), []); send(data)
        got, kinds = b"", []
        while ("return", qid, "results") not in kinds:
            got += sock.recv(1 << 16)
            while (n := wire.framed_size(got, 0)) is not None and n <= len(got):
                m = rpc.Message.from_segments([bytes(s) for s in wire.unframe(got[:n])])
                got = got[n:]
                ret = getattr(m, "return") if m.which() == "return" else None
                kinds.append((m.which(), ret.answerId, ret.which())
                             if m.which() == "return" else m.which())
        log("evil got", kinds)
        log("evil's call answered")
        time.sleep(5)
    """)
    got = run.wait_for("evil got")
    assert got.count("'unimplemented'") == 4, got
    run.wait_for("evil's call answered")
    assert not any("evil: protocol error" in line for line in run.lines), run.lines
    _neighbours_unharmed(run, sock)


def test_system_calls_from_a_taken_over_engine_are_refused_and_reach_no_neighbour(hostile):
    """What native code would try first: signal everyone (kill(-1), its process
    group, pids 1..4096), sockets, new processes, namespaces, mounts, the kernel's
    riskier interfaces, code of its own (memfd_create then exec), /proc.  Signal 0
    (an existence probe): a filter that let them through must not take the test's
    own processes with it; seccomp answers before the signal is looked at."""
    run, sock = hostile("""
        import ctypes, errno, json, socket
        from compartments.seccomp import SYSCALLS
        def sc(name, *args):
            args = [ctypes.c_char_p(a) if isinstance(a, bytes) else
                    ctypes.c_long(a) if isinstance(a, int) else a for a in args]
            rc = libc.syscall(SYSCALLS[name], *args)
            if rc < 0:
                raise OSError(ctypes.get_errno(), name)
            return rc
        got = {}
        def attempt(name, f):
            try:
                got[name] = "allowed: %r" % (f(),)
            except OSError as e:
                got[name] = errno.errorcode.get(e.errno, str(e.errno))
            except Exception as e:
                got[name] = type(e).__name__
        buf = ctypes.create_string_buffer(256)
        attempt("kill everyone", lambda: sc("kill", -1, 0))
        attempt("kill its group", lambda: sc("kill", 0, 0))
        attempt("kill a pid", lambda: [p for p in range(1, 4097)     # none, or EPERM
                                       if libc.syscall(SYSCALLS["kill"], p, 0) == 0]
                or sc("kill", 1, 0))
        attempt("tgkill", lambda: sc("tgkill", 1, 1, 0))
        attempt("socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        attempt("connect", lambda: sc("connect", 0, buf, 16))
        attempt("ptrace", lambda: sc("ptrace", 16, 1, 0, 0))
        attempt("fork", lambda: os.fork() == 0 and os._exit(0))
        attempt("clone3", lambda: sc("clone3", ctypes.create_string_buffer(88), 88))
        attempt("unshare", lambda: sc("unshare", 0x10000000 | 0x00020000))
        attempt("mount", lambda: sc("mount", b"none", b"/", b"tmpfs", 0, None))
        attempt("bpf", lambda: sc("bpf", 0, buf, 64))
        attempt("io_uring", lambda: sc("io_uring_setup", 1, buf))
        attempt("userfaultfd", lambda: sc("userfaultfd", 0))
        attempt("perf_event_open", lambda: sc("perf_event_open", buf, 0, -1, -1, 0))
        attempt("memfd_create", lambda: sc("memfd_create", b"x", 0))
        attempt("exec", lambda: os.execv("/bin/sh", ["sh"]))
        attempt("open", lambda: open("/etc/passwd").read())
        attempt("proc", lambda: os.listdir("/proc"))
        attempt("send a descriptor", lambda: sock.sendmsg([b"x"], [(
            socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 2))]))
        log("evil got " + json.dumps(got))
        time.sleep(5)
    """)
    calc_pid = next(line for line in run.lines if "ready calc" in line).split("pid=")[1]
    got = json.loads(run.wait_for("evil got ").split("evil got ", 1)[1])
    allowed = {name: why for name, why in got.items() if why.startswith("allowed")}
    assert not allowed, got
    _neighbours_unharmed(run, sock)
    assert not any("calc" in line and "restart" in line for line in run.lines), run.lines
    assert os.path.exists(f"/proc/{calc_pid.split()[0]}")


def test_what_a_taken_over_engine_writes_on_its_stderr_stays_its_own_bounded_lines(hostile):
    """Escape sequences, carriage returns, lines forged as the supervisor's, and a
    10 MB line: every line shown is prefixed `[evil]`, escaped, in pieces of at most
    4 KiB, at most log_rate of them a second."""
    run, sock = hostile("""
        os.write(2, b"\\x1b[2J\\x1b[31mwsuper: ready calc pid=1\\n\\rwsuper: calc failed\\n")
        os.write(2, b"\\x1b]0;title\\x07 \\xe2\\x80\\xae \\x9b31m\\n")
        os.write(2, b"x" * (10 << 20) + b"\\n")
        log("evil is done")
        time.sleep(5)
    """)
    _neighbours_unharmed(run, sock)
    run.stop()
    _no_line_of_its_own(run)
    evil = [line for line in run.lines if line.startswith("[evil]")]
    assert r"[evil] stderr: \x1b[2J\x1b[31mwsuper: ready calc pid=1" in evil
    assert max(map(len, evil)) < 4096 + 64
    assert sum(map(len, evil)) < 4 << 20, "10 MB of a line, all of it shown at once"


#: Compartments whose engines are taken over and flood, beside calc: all of them
#: with message_size 64 KiB (soft bound 1 MiB, hard 20 MiB; their pool 38 MiB).
FLOODERS = 5
SMALL = '\n[compartments.{name}.limits]\nmessage_size = "64KiB"\n'


@pytest.mark.parametrize("path", ["lane", "python"])
def test_engines_that_call_and_read_nothing_are_bounded_all_together_not_each_alone(
        tmp_path, path):
    """What waits for an engine was bounded per engine only, by its hard bound: N
    compartments whose engines call as fast as they can and read nothing (taken
    over, or plugins that stopped reading) made the supervisor hold N hard bounds
    (8 of them at the default message_size: 643 MB of RSS, against 39 MB), charged
    to no compartment (r258).  Beyond each one's soft bound it comes from one pool
    for all engines; the ones holding the most are cut off, naming it, and calc,
    holding nothing, answers throughout.  On the fast lane and off it."""
    system = SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).split("[compartments.evil]")[0]
    system += SMALL.format(name="calc")
    (tmp_path / "payloads").mkdir()
    for i in range(FLOODERS):
        system += (f'\n[compartments.evil{i}]\nmodule = "{EXAMPLES}/calc.wat"\n'
                   f'restart = "never"\n[compartments.evil{i}.grants]\n'
                   f'rnd = {{ host = "random" }}\ncalc = {{ compartment = "calc" }}\n'
                   + SMALL.format(name=f"evil{i}"))
        # 560 answers of 32 KiB: 18 MiB, each below its own hard bound of 20 MiB
        (tmp_path / "payloads" / f"evil{i}.py").write_text(PRELUDE + textwrap.dedent(f"""
            rnd = engine.grants["rnd"][1].import_id
            body = Content.standalone([struct.pack("<QI4x", 1 << 32, 32768)])
            time.sleep(1)
            for n in range(560):
                try:
                    send(conn.send_call(rnd, 0xa05a5e2c6b2f6d05, 0, body, [])[1])
                except OSError:
                    break
            log("evil{i} flooded")
            time.sleep(60)
        """))
    (tmp_path / "system.toml").write_text(system)
    env = {**os.environ, "WSUPER_NATIVE": "0" if path == "python" else "1"}
    run = Hostile(str(tmp_path / "payloads"), str(tmp_path / "system.toml"), env)
    try:
        run.wait_for("all compartments ready")
        before = _supervisor(run.proc.pid)
        pool = 2 * (R.queue_hard_limit(Limits(message_size=64 << 10))
                    - R.queue_soft_limit(Limits(message_size=64 << 10)))
        # 5 x 17.4 MiB beyond their own: at most two fit in the pool, three go, each
        # named as holding the most (or as the writer that would)
        k = 0
        for _ in range(FLOODERS - 2):
            line = run.wait_for(": connection cut off: it does not read its messages", start=k)
            k = run.lines.index(line, k) + 1
            assert line.startswith("wsuper: evil"), line
            assert f"compartments together may have at most {pool} bytes" in line, line
        assert not any("calc" in line and "cut off" in line for line in run.lines)
        # what waits for them all: their own 1 MiB each and the pool, not 5 x 18 MiB
        _neighbours_unharmed(run, str(tmp_path / "ext.sock"))
        rss, end = before[1], time.monotonic() + 10
        while time.monotonic() < end:           # until the answers are all written
            time.sleep(0.5)
            rss, last = _supervisor(run.proc.pid)[1], rss
            if abs(rss - last) < 1024:
                break
        assert rss - before[1] <= (FLOODERS + 38 + 16) * 1024, (rss, before)
    finally:
        run.stop()


@pytest.mark.parametrize("path", ["lane", "python"])
def test_half_a_message_then_silence_from_a_taken_over_engine_is_cut_off_at_message_timeout(
        tmp_path, path):
    """r254's table said of an engine that sends half a message and then nothing
    that nothing but its own calls waits, with no cut-off: message_timeout bounds
    the engines' messages too (policy-reference), on the lane (Lane.stalled) and
    off it (Supervisor._pump).  It is cut off, naming the limit, and restarted."""
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "evil.py").write_text(PRELUDE + textwrap.dedent("""
        send(struct.pack("<II", 0, 1000) + bytes(100))     # 100 bytes of 8,000
        log("evil sent half")
        time.sleep(60)
    """))
    system = SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).replace(
        "[system]\n", "[system]\nmessage_timeout = 1\n", 1)
    (tmp_path / "system.toml").write_text(system)
    env = {**os.environ, "WSUPER_NATIVE": "0" if path == "python" else "1"}
    run = Hostile(str(tmp_path / "payloads"), str(tmp_path / "system.toml"), env)
    try:
        run.wait_for("evil sent half")
        line = run.wait_for("evil: connection cut off", timeout=10)
        assert line.endswith("it sent part of a message and did not finish it within 1 s "
                             "(message_timeout)"), line
        line = run.wait_for("restarting evil")
        assert "(engine cut off: it sent part of a message" in line, line
        _neighbours_unharmed(run, str(tmp_path / "ext.sock"))
        run.stop()
        _no_line_of_its_own(run)
    finally:
        run.stop()


#: A taken-over callee that answers every call with 4 MiB and a capability of its own
#: (results the supervisor keeps for pipelining until the caller's Finish).
KEEPER = """
import struct, time
words = (4 << 20) // 8
big = Content.standalone([struct.pack("<Q", words << 32) + b"\\1" * (8 * words)])
while True:
    for ev in recv_events(60):
        if isinstance(ev, P.CallReceived):
            send(conn.send_return(ev.answer_id, big, [object()]))
"""
#: ... and its callers, which read their answers and never send Finish: 15 of them
#: keep 60 MiB each, below the 64 MiB a connection may keep
NO_FINISH = """
body = add(1, 2)
for n in range(15):
    send(conn.send_call(keeper, CALC, 0, body, [])[1])
    end = time.monotonic() + 10
    while time.monotonic() < end and not any(
            isinstance(e, P.ReturnReceived) for e in recv_events(1)):
        pass
log("{name} kept 15")
time.sleep(60)
"""


def test_results_callers_never_finish_are_bounded_all_together_not_each_alone(tmp_path):
    """Results returned with capabilities are kept for calls pipelined on them until
    the caller's Finish, up to 64 MiB a connection: 4 taken-over compartments that
    called a colluding one returning 4 MiB with a capability, and never finished,
    made the supervisor hold 4 x 60 MiB (RSS 47 to 307 MB), N x 60 MiB for N
    (r258).  Beyond each one's own 8 MiB they come from one pool for all
    compartments; the ones holding the most are cut off, naming it."""
    system = SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).split("[compartments.evil]")[0]
    system += (f'\n[compartments.keeper]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
               f'[compartments.keeper.grants]\ncalc = {{ compartment = "calc" }}\n')
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "keeper.py").write_text(PRELUDE + KEEPER)
    for i in range(4):
        system += (f'\n[compartments.evil{i}]\nmodule = "{EXAMPLES}/calc.wat"\n'
                   f'restart = "never"\n[compartments.evil{i}.grants]\n'
                   f'calc = {{ compartment = "calc" }}\nkeeper = {{ compartment = "keeper" }}\n')
        (tmp_path / "payloads" / f"evil{i}.py").write_text(
            PRELUDE + 'keeper = engine.grants["keeper"][1].import_id\n'
            + NO_FINISH.replace("{name}", f"evil{i}"))
    (tmp_path / "system.toml").write_text(system)
    run = Hostile(str(tmp_path / "payloads"), str(tmp_path / "system.toml"))
    try:
        run.wait_for("all compartments ready")
        before = _supervisor(run.proc.pid)
        # 4 x 52 MiB beyond their own: two fit in the pool (112 MiB), two go
        k = 0
        for _ in range(2):
            line = run.wait_for("connection aborted: protocol error: answers it has not "
                                "finished hold", start=k)
            k = run.lines.index(line, k) + 1
            assert line.startswith("wsuper: evil"), line
            assert f"compartments together may hold at most {R.KEPT_POOL_BYTES} beyond " \
                   f"their own" in line, line
        k = 0
        for _ in range(2):                    # the other two keep theirs
            k = run.lines.index(run.wait_for(" kept 15", start=k), k) + 1
        assert not any(line.startswith(("wsuper: calc", "wsuper: keeper")) and "abort" in line
                       for line in run.lines), run.lines
        _neighbours_unharmed(run, str(tmp_path / "ext.sock"))
        rss = _supervisor(run.proc.pid)[1]
        assert rss - before[1] <= (3 * 60 + 24) * 1024, (rss, before)   # not 4 x 60 and more
    finally:
        run.stop()


GUESTS = os.path.join(ROOT, "tests", "integration", "guests")
SPIN = 0xC0FFEE00000000F1
BUSY = 8                         # honest compartments, each busy in a long call
#: callers of the busy ones: evil0 first makes each busy (Spin.spin) and sends it
#: calls up to its soft bound and one past (8 MiB each: 24 MiB waiting); then each of
#: the others one call of 4 MiB, a quarter of the soft bound, as any caller may
#: until twice the soft bound (router._not_reading): 36 MiB waiting for each
CALLER = """
import os
spin_ids = [engine.grants[f"busy{{i}}"][1].import_id for i in range({busy})]
def params(size):
    words = size // 8 - 2
    return Content.standalone([struct.pack("<Q", words << 32) + b"\\1" * (8 * words)])
time.sleep({wait})
body = params({size})
for imp in spin_ids:
    if {first}:
        send(conn.send_call(imp, {spin}, 0, Content.standalone([struct.pack("<Q", 0)]), [])[1])
    for _ in range({calls}):
        send(conn.send_call(imp, {spin}, 1, body, [])[1])
log("{name} sent")
time.sleep(60)
"""


def test_honest_compartments_busy_in_a_call_are_not_cut_off_for_what_callers_queued(
        tmp_path):
    """Past an engine's soft bound, what waits for it comes from one pool for all
    engines (r258), and the ones holding the most of it are cut off as not reading.
    But calls to a compartment busy in a long call wait for it up to twice its soft
    bound (router._not_reading lets each caller a quarter of it there): bytes its
    callers sent, bounded and refused past that, not bytes it failed to read of its
    own making.  A few callers (here taken-over compartments, as honest ones could)
    filled that room in 8 busy compartments: 8 x 20 MiB beyond their own, past the
    128 MiB pool, and an honest compartment was cut off 'it does not read its
    messages', with every call in it (r261).  Only what is not such calls (answers to
    its own calls, flooded unread: the r258 attack) is the pool's."""
    system = SYSTEM.format(examples=EXAMPLES, tmp=tmp_path).split("[compartments.evil]")[0]
    system = system.replace('schemas = [', f'schemas = ["{GUESTS}/spin.capnp", ')
    for i in range(BUSY):
        system += (f'\n[compartments.busy{i}]\nmodule = "{GUESTS}/spin.wat"\nexports = "Spin"\n'
                   f'restart = "never"\n[compartments.busy{i}.limits]\n'
                   f'fuel_per_call = 4_000_000_000_000_000\ncall_time = 30\n')
    (tmp_path / "payloads").mkdir()
    callers = [("evil0", 1, 3, (8 << 20) - 4096, 0)] + \
        [(f"evil{k}", 0, 1, (4 << 20) - 4096, 4) for k in (1, 2, 3)]
    for name, first, calls, size, wait in callers:
        grants = 'calc = { compartment = "calc" }\n' + "".join(
            f'busy{i} = {{ compartment = "busy{i}" }}\n' for i in range(BUSY))
        system += (f'\n[compartments.{name}]\nmodule = "{EXAMPLES}/calc.wat"\n'
                   f'restart = "never"\n[compartments.{name}.grants]\n{grants}')
        (tmp_path / "payloads" / f"{name}.py").write_text(PRELUDE + CALLER.format(
            busy=BUSY, wait=wait, size=size, first=first, calls=calls, spin=SPIN, name=name))
    (tmp_path / "system.toml").write_text(system)
    run = Hostile(str(tmp_path / "payloads"), str(tmp_path / "system.toml"))
    try:
        run.wait_for("all compartments ready")
        k = 0
        for _ in callers:
            k = run.lines.index(run.wait_for(" sent", start=k, timeout=60), k) + 1
        _neighbours_unharmed(run, str(tmp_path / "ext.sock"))
        time.sleep(1)
        assert not any("busy" in line and "cut off" in line for line in run.lines), \
            [line for line in run.lines if "cut off" in line]
    finally:
        run.stop()
