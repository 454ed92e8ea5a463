"""The supervisor's end of the zygote when the zygote goes with requests unread."""
import os
import signal
import socket
import subprocess

import pytest
import trio

from supervisor import process
from tests.conftest import read_line


def test_a_zygote_gone_with_a_request_unread_ends_its_run_not_the_supervisor():
    """A review of the stop racing start-up: the stop ends the zygote (its stop signal)
    while requests for engines may still be in its socket, unread.  Its end of a
    Unix socket closed with data unread makes the supervisor's recv fail with
    ECONNRESET, not end: Zygote.run raised it, and `wsuper up` ended in a
    traceback with exit 1 instead of its stop's 143 (seen 2 in 6 runs of
    test_a_start_under_way_when_the_stop_ends_the_zygote_is_no_failure).  A
    zygote whose socket fails is gone, as one whose socket ended."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    zygote = object.__new__(process.Zygote)
    zygote._popen = subprocess.Popen(["true"])
    zygote.pid = zygote._popen.pid
    zygote._raw = ours
    zygote._sock = trio.socket.from_stdlib_socket(ours)
    zygote._waiting = {}
    zygote._engines = {}
    zygote._early = {}
    zygote.alive = True
    ours.send(b'1 {"request": "never read"}\n')
    theirs.close()                  # gone, the request unread: ECONNRESET here
    answer = process._Answer()
    zygote._waiting[1] = answer

    async def main():
        with trio.fail_after(10):
            await zygote.run()
    trio.run(main)
    assert not zygote.alive and answer.value is None
    ours.close()


def _reap(popen, *socks):
    """A test's stand-in zygote ended (killed if it still runs), and its sockets closed."""
    if popen.poll() is None:
        popen.kill()
    popen.wait()
    popen.stdout.close()
    for sock in socks:
        sock.close()


def _zygote_of(popen, ours):
    zygote = object.__new__(process.Zygote)
    zygote._popen = popen
    zygote.pid = popen.pid
    zygote._raw = ours
    zygote._sock = trio.socket.from_stdlib_socket(ours)
    zygote._waiting = {}
    zygote._engines = {}
    zygote._early = {}
    zygote._answered = set()
    zygote._abandoned = set()
    zygote.heard = float("-inf")
    zygote.alive = True
    return zygote


def test_the_zygotes_run_ended_lets_it_end_by_its_own_stop_first(tmp_path, monkeypatch):
    """The zygote's stop signal (zygote.STOP) runs its handler, which ends every
    compiler's process group before the zygote goes: what a compiler forked must
    not outlive the system.  `wsuper up`'s stop sent it (Zygote.stop) and then
    cancelled Zygote.run at once, whose end SIGKILLed a zygote still running: the
    SIGKILL came before the handler ran (4 stops in 5 with a real zygote), and
    the groups were never ended.  Whatever ends run(), the zygote gets its STOP
    and its handler's end; one that does not end by it is killed after
    launch.STOP_GRACE."""
    import signal
    import sys
    from compartments import zygote as zygote_module
    done = tmp_path / "handler ran"
    from supervisor import launch
    # the grace the supervisor gives a stop, long beside the handler's 0.5 s: with 2 s,
    # a loaded CI machine ran the handler late and the zygote was killed at its end
    # (-9, once in a full run); the fault this finds is a kill before any grace
    monkeypatch.setattr(launch, "STOP_GRACE", 10.0)
    # plays a zygote whose handler takes a while (a loaded machine schedules it late)
    code = f"""if True:
        import os, signal, sys, time
        def stop(signum, frame):
            time.sleep(0.5)
            open({str(done)!r}, "w").close()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        signal.signal({int(zygote_module.STOP)}, stop)
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        time.sleep(60)
    """
    for how in ("stopped", "cancelled", "socket ended"):
        done.unlink(missing_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        popen = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert read_line(popen) == b"ready\n"
        zygote = _zygote_of(popen, ours)

        async def main():
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(zygote.run)
                    await trio.sleep(0)
                    if how == "stopped":
                        zygote.stop()
                    if how == "socket ended":
                        theirs.close()
                    else:
                        nursery.cancel_scope.cancel()
        try:
            trio.run(main)
        finally:
            _reap(popen, theirs, ours)
        assert popen.returncode == -zygote_module.STOP and done.exists(), (how, popen.returncode)
    # one that does not end by its stop is killed all the same
    monkeypatch.setattr(launch, "STOP_GRACE", 0.2)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    popen = subprocess.Popen([sys.executable, "-c", f"""if True:
        import signal, sys, time
        signal.signal({int(zygote_module.STOP)}, signal.SIG_IGN)
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        time.sleep(60)
    """], stdout=subprocess.PIPE)
    assert read_line(popen) == b"ready\n"
    zygote = _zygote_of(popen, ours)
    theirs.close()

    async def ended():
        with trio.fail_after(30):
            await zygote.run()
    try:
        trio.run(ended)
    finally:
        _reap(popen, ours)
    assert popen.returncode == -signal.SIGKILL


def test_the_zygotes_end_is_waited_for_by_its_pidfd_not_by_polling_a_clock(tmp_path):
    """At the stop, Zygote.run waited for the zygote's end by looking every 10 ms
    (trio.sleep): each stop of a system waited up to that much more, and every
    `wsuper up` of the test suite with it.  Now its pidfd wakes the wait.  Under a
    clock that never moves (trio's MockClock, rate 0), a sleep never ends: a zygote
    whose stop handler takes 0.3 s must still be seen ended, within 30 s of real
    time, by its stop signal."""
    import sys
    import threading

    import trio.testing

    from compartments import zygote as zygote_module
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    popen = subprocess.Popen([sys.executable, "-c", f"""if True:
        import os, signal, sys, time
        def stop(signum, frame):
            time.sleep(0.3)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        signal.signal({int(zygote_module.STOP)}, stop)
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        time.sleep(60)
    """], stdout=subprocess.PIPE)
    assert read_line(popen) == b"ready\n"
    zygote = _zygote_of(popen, ours)
    theirs.close()                       # its socket ends first: run() stops it, waits
    runner = threading.Thread(target=trio.run, args=(zygote.run,),
                              kwargs={"clock": trio.testing.MockClock()}, daemon=True)
    try:
        runner.start()
        runner.join(30)
        assert not runner.is_alive(), "the end of the zygote waited for a clock"
    finally:
        _reap(popen, ours)
    assert popen.returncode == -zygote_module.STOP


def _serving_zygote():
    """A real zygote (launch.Launched), once it serves (its stop handler is in)."""
    import os

    from supervisor import launch
    from tests.conftest import EXAMPLES
    launched = launch.Launched()
    assert launched.parse_schema(os.path.join(EXAMPLES, "calc.capnp"), []) is not None
    return launched


@pytest.mark.parametrize("how", ["the runtime's stop", "its run cancelled",
                                 "discarded", "discarded while SIGSTOPped"])
def test_the_supervisor_ends_its_zygote_by_its_stop_signal_not_sigkill(monkeypatch, how):
    """A review of the zygote's stop signal: the runtime's stop sent it zygote.STOP
    and then cancelled Zygote.run, whose end SIGKILLed the zygote at once (seen in
    3 of 4 stops: the zygote ended -9, its handler never ran), and
    Launched.discard (a system refused, or stopped at start-up while a schema was
    parsed) SIGKILLed it too: the zygote never ended its compilers' (and the
    schema parser's) process groups, and what they forked outlived the system.
    Every end of the supervisor's is by the stop signal, SIGKILL only when it has
    not ended within launch.STOP_GRACE (one SIGSTOPped never does)."""
    import os
    import signal

    from compartments import zygote as zygote_module
    from supervisor import launch
    # a grace long beside a real zygote's stop (milliseconds), so that a loaded
    # machine cannot make a late handler look like a SIGKILL first
    monkeypatch.setattr(launch, "STOP_GRACE", 10.0)
    launched = _serving_zygote()
    popen = launched.popen
    try:
        if how.startswith("discarded"):
            if how.endswith("SIGSTOPped"):
                monkeypatch.setattr(launch, "STOP_GRACE", 0.5)
                os.kill(popen.pid, signal.SIGSTOP)
            launched.discard()
        else:
            zygote = process.Zygote(launched)

            async def main():
                with trio.fail_after(30):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(zygote.run)
                        await trio.sleep(0)
                        if how == "the runtime's stop":
                            zygote.stop()
                        nursery.cancel_scope.cancel()     # as _serve_all's end does
            trio.run(main)
            zygote._raw.close()
        expected = -signal.SIGKILL if how.endswith("SIGSTOPped") else -zygote_module.STOP
        assert popen.returncode == expected, popen.returncode
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()


@pytest.mark.parametrize("line", [
    b"not json\n", b"[1]\n", b'"pid"\n', b'{"pid": -1, "id": 1}\n', b'{"pid": 0, "id": 1}\n',
    b'{"pid": 1, "id": 1}\n', b'{"pid": "7", "id": 1}\n', b'{"pid": 77, "id": [1]}\n',
    b'{"error": 5, "id": 1}\n', b'{"exit": [1], "code": 0}\n', b'{"exit": 77}\n',
    b'{"nothing": 1}\n', b"[" * 100_000 + b"\n", b"x" * (process.LINE_LIMIT + 2)])
def test_a_line_of_the_zygote_that_is_not_an_answer_stops_it_and_names_it(line):
    """The zygote as a hostile peer: a line that is not JSON (or JSON of another
    shape) raised out of Zygote.run, and `wsuper up` ended in a traceback; a pid of
    0 or -1 became an engine whose kill() signalled the supervisor's process group,
    or every process it may signal; a line without end grew without bound.  Each
    ends the zygote's run as a zygote gone (it is stopped, and the system with
    it), saying why; no request waiting gets an engine."""
    import sys
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zygote = _zygote_of(popen, ours)
    answer = process._Answer()
    zygote._waiting[1] = answer

    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote.run)
                await trio.to_thread.run_sync(theirs.sendall, line)
    try:
        trio.run(main)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        theirs.close()
        ours.close()
    assert not zygote.alive and answer.value is None and popen.returncode is not None
    assert zygote.broken is not None and ("not an answer" in zygote.broken
                                          or "a line of more than" in zygote.broken)


def test_exits_the_zygote_reports_of_no_engine_of_ours_are_not_kept():
    """Exit events for pids it never answered with are no engine's: each was kept
    for an engine to come, for good (a zygote that made them up grew the table
    without bound); one for a pid answered and not registered yet still is."""
    import sys
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zygote = _zygote_of(popen, ours)
    answer = process._Answer()
    zygote._waiting[1] = answer
    lines = b"".join(b'{"exit": %d, "code": 0}\n' % pid for pid in range(100_000, 101_000))
    lines += b'{"pid": 99999, "id": 1}\n{"exit": 99999, "code": 3}\n'

    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote.run)
                await trio.to_thread.run_sync(theirs.sendall, lines)
                await trio.to_thread.run_sync(theirs.close)
    try:
        trio.run(main)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        ours.close()
    assert zygote.broken is None and answer.value == {"pid": 99999, "id": 1}
    assert zygote._early == {99999: 3}


@pytest.mark.parametrize("answer", [b"[" * 100_000 + b"\n", b"[1]\n", b'{"schema": 0}\n',
                                    b" " * (2 << 20)])
def test_a_schema_answer_of_the_zygote_that_is_not_one_discards_it(answer):
    """Launched.parse_schema reads the zygote's answer as a peer's input: JSON nested
    past the interpreter's depth raised RecursionError out of `wsuper up`, and an
    answer without end was read without bound.  Each discards the zygote (the file
    is parsed another way), as any answer of another shape did."""
    import sys
    from supervisor import launch
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    launched = object.__new__(launch.Launched)
    launched.popen, launched.sock = popen, ours
    import threading
    writer = threading.Thread(target=_send_quietly, args=(theirs, answer))
    writer.start()
    try:
        assert launched.parse_schema("/nonexistent.capnp", []) is None
        assert launched.sock is None and popen.poll() is not None
    finally:
        theirs.close()
        writer.join()
        if popen.poll() is None:
            popen.kill()
        popen.wait()


def _send_quietly(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass


@pytest.mark.parametrize("after", [1, 2])
def test_a_zygote_stopped_for_what_it_sent_is_named_whichever_start_notices_first(
        tmp_path, after):
    """`wsuper up` with a zygote that sends a line that is not an answer of its after
    its `after`-th answer: the system stops, exit 1, nothing of it left running, and
    says why, quoting the line.  With a start under way when it was stopped (after
    its first answer: app's request is waiting), the start's failure said it first,
    'cannot start compartment ...: the zygote is gone', and the stop's reason (the
    line) was never said: the runtime's own word on the zygote's end is said only
    if the system is not stopping yet."""
    import os
    import shutil
    import sys

    from tests.conftest import EXAMPLES, ROOT
    for name in ("calc.capnp", "calc.wat"):
        shutil.copy(os.path.join(EXAMPLES, name), tmp_path / name)
    # two services, no program: nothing but the zygote's line ends the system
    (tmp_path / "system.toml").write_text(
        '[system]\nschemas = ["calc.capnp"]\n'
        '[compartments.calc]\nmodule = "calc.wat"\nexports = "Calc"\n'
        '[compartments.app]\nmodule = "calc.wat"\nexports = "Calc"\n')
    bad = b'{"pid": 1, "id": 77}'
    line = bad + b"\n"
    (tmp_path / "zygote.py").write_text(f"""if True:
        import socket, sys
        real, answers = socket.socket.sendall, []
        def sendall(self, data, *args):
            sent = real(self, data, *args)
            if data.startswith(b'{{"pid"'):
                answers.append(data)
                if len(answers) == {after}:
                    real(self, {line!r})
            return sent
        socket.socket.sendall = sendall
        sys.argv = ["zygote", sys.argv[-2], sys.argv[-1]]
        sys.path.insert(0, {ROOT!r})
        from compartments import zygote
        zygote.main()
    """)
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -I {tmp_path / 'zygote.py'} \"$@\"\n")
    wrapper.chmod(0o755)
    drive = f"""if True:
        import sys
        sys.executable = {str(wrapper)!r}
        from supervisor.cli import main
        sys.exit(main())
    """
    done = subprocess.run(
        [sys.executable, "-c", drive, "up", "--socket", str(tmp_path / "s.sock"),
         str(tmp_path / "system.toml")], cwd=ROOT, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err, err
    assert f"it sent a line that is not an answer of its: {bad.decode()}" in err, err
    import time
    for _ in range(100):    # engines end by PR_SET_PDEATHSIG once the zygote has
        left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
        if not left.stdout:
            break
        time.sleep(0.05)
    assert left.stdout == "", left.stdout


@pytest.mark.parametrize("end", [b'{"pid": 1, "id": 77}\n', b""])
def test_an_engine_answered_just_before_the_zygotes_end_is_gone_with_it(end):
    """The zygote answers a request, then its run ends before the request's spawn
    has taken the answer (a line that is not an answer of its right behind it, or
    the zygote gone): run's end let go of the engines registered, but spawn then
    registered this one, whose exit nobody would ever report.  Its wait() never
    returned: `wsuper up` sat out GRACE_SECONDS twice in its stop (4 s) for it.
    It is gone with the zygote, as the others are."""
    import os
    import sys

    from compartments.spec import EngineSpec
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zygote = _zygote_of(popen, ours)
    zygote._ids = iter(range(1, 100))
    zygote._lock = trio.Lock()
    engine_sock = socket.socketpair()
    forked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    got = []

    def play():          # the zygote: read the request, answer it, then end
        data, fds, _flags, _addr = socket.recv_fds(theirs, 1 << 16, 4)
        for fd in fds:
            os.close(fd)
        theirs.sendall(b'{"pid": %d, "id": 1}\n' % forked.pid + end)
        if not end:
            theirs.shutdown(socket.SHUT_WR)

    async def main():
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote.run)
                nursery.start_soon(trio.to_thread.run_sync, play)
                spec = EngineSpec(name="calc", module="/nonexistent.wasm")
                engine = await zygote.spawn(spec, engine_sock[1].fileno())
                got.append(engine)
                with trio.move_on_after(5):
                    await engine.wait()
    try:
        trio.run(main)
    finally:
        for p in (popen, forked):
            if p.poll() is None:
                p.kill()
            p.wait()
        theirs.close()
        ours.close()
        for s in engine_sock:
            s.close()
    engine, = got
    assert not zygote.alive and engine.returncode is not None
    assert zygote._engines == {} and zygote._answered == set()


def test_an_engine_is_signalled_through_its_pidfd_not_a_pid_another_may_have_now():
    """An engine is not our child: the zygote reaps it, then reports its exit.  Between
    the two (or for as long as a stopped zygote sits on the report) its pid is free,
    and the kernel may give it to any other process.  ForkedEngine.send_signal sent
    the stop's SIGTERM, or a kill (a lingering engine, a CPU limit), with os.kill to
    the pid: to that other process, any of the user's.  It holds a pidfd of the
    engine (Zygote.spawn), which names the engine alone.  Here the pid stands for
    the reused one: a process that is not the engine."""
    engine_proc = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])    # has the engine's pid now
    try:
        engine = process.ForkedEngine(other.pid, None, os.pidfd_open(engine_proc.pid))

        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.watch)
                await trio.sleep(0)
                engine.kill()                    # the engine, not `other`
                with trio.fail_after(10):
                    await engine.gone.wait()     # seen gone by its pidfd
                nursery.cancel_scope.cancel()
        trio.run(main)
        assert engine_proc.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None, "the process that has the engine's pid now was killed"
        engine.kill()                            # gone, its pidfd closed: by pid again?
        assert other.poll() is None
    finally:
        for p in (engine_proc, other):
            p.kill()
            p.wait()


def test_an_engine_whose_pid_is_anothers_when_answered_is_gone_not_watched_nor_signalled():
    """Zygote.spawn opens a pidfd of the engine once the zygote has answered with its
    pid.  An engine that ended at once, reaped by the zygote before that open, has
    its pid free, and the kernel may have given it to any process by then: the pidfd
    named that process, which was then watched as the engine (its end the engine's)
    and signalled as the engine (the stop's SIGTERM, a kill).  The pid must still be
    a child of the zygote's when its pidfd is opened; if it is not, the engine is
    gone (its exit, which the zygote reports, on its way), and never signalled."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    zygote = object.__new__(process.Zygote)
    zygote._popen = subprocess.Popen(["sleep", "60"])     # stands for the zygote
    other = subprocess.Popen(["sleep", "60"])             # not its child: has the pid now
    zygote.pid = zygote._popen.pid
    zygote._raw = ours
    zygote._sock = trio.socket.from_stdlib_socket(ours)
    zygote._waiting = {}
    zygote._ids = iter(range(1, 100))
    zygote._engines = {}
    zygote._early = {}
    zygote._answered = set()
    zygote._abandoned = set()
    zygote.heard = float("-inf")
    zygote._lock = trio.Lock()
    zygote.alive = True

    class Spec:
        from compartments.limits import Limits
        limits = Limits()

        def to_json(self):
            return b"{}"

    async def answer():
        await trio.lowlevel.wait_readable(theirs)
        _line, fds, _flags, _addr = socket.recv_fds(theirs, 1 << 16, 4)
        for fd in fds:
            os.close(fd)
        theirs.sendall(b'{"pid": %d, "id": 1}\n' % other.pid)

    try:
        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote.run)
                nursery.start_soon(answer)
                a, b = socket.socketpair()
                with a, b, trio.fail_after(10):
                    engine = await zygote.spawn(Spec(), b.fileno())
                assert engine.gone.is_set(), "the pid of another process taken as the engine's"
                engine.kill()
                engine.terminate()
                nursery.cancel_scope.cancel()
        trio.run(main)
        assert other.poll() is None, "the process that has the engine's pid now was signalled"
    finally:
        for p in (zygote._popen, other):
            p.kill()
            p.wait()
        ours.close()
        theirs.close()


def test_a_start_is_bounded_by_the_zygotes_silence_not_by_a_busy_zygotes_compiles(
        monkeypatch):
    """Zygote.spawn waited for the zygote's answer without a bound: a zygote stopped
    (SIGSTOP) or wedged held its compartment "restarting" for ever.  A zygote that
    says {"busy": N} (requests wait for its compiles) holds a start as long as it
    goes on saying so; one that says nothing for ANSWER_SILENCE fails it (Stalled,
    an OSError that names the zygote), and an engine it forks for that request
    later is nobody's, and is killed."""
    from compartments.limits import Limits
    monkeypatch.setattr(process, "ANSWER_SILENCE", 0.5)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    stand_in = subprocess.Popen(["sleep", "60"])          # stands for the zygote's process
    zygote = _zygote_of(stand_in, ours)
    zygote.pid = os.getpid()      # the engines below are our children: the "zygote's"
    zygote._ids = iter(range(1, 100))
    zygote._lock = trio.Lock()
    busy_engine = subprocess.Popen(["sleep", "60"])
    late_engine = subprocess.Popen(["sleep", "60"])

    class Spec:
        limits = Limits(start_time=0.1)

        def to_json(self):
            return b"{}"

    async def request():
        await trio.lowlevel.wait_readable(theirs)
        _line, fds, _flags, _addr = socket.recv_fds(theirs, 1 << 16, 4)
        for fd in fds:
            os.close(fd)

    async def busy_then_answer():
        await request()
        for _ in range(10):                  # 1 s in all: twice ANSWER_SILENCE
            theirs.sendall(b'{"busy": 1}\n')
            await trio.sleep(0.1)
        theirs.sendall(b'{"pid": %d, "id": 1}\n' % busy_engine.pid)

    try:
        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote.run)
                nursery.start_soon(busy_then_answer)
                a, b = socket.socketpair()
                with a, b, trio.fail_after(20):
                    engine = await zygote.spawn(Spec(), b.fileno())
                    assert engine.pid == busy_engine.pid
                    nursery.start_soon(request)
                    with pytest.raises(process.Stalled) as e:
                        await zygote.spawn(Spec(), b.fileno())
                    assert "said nothing for 0.5 s" in str(e.value), e.value
                    assert "stopped or wedged" in str(e.value), e.value
                    theirs.sendall(b'{"pid": %d, "id": 2}\n' % late_engine.pid)
                    while late_engine.poll() is None:   # the late answer's engine: killed
                        await trio.sleep(0.05)
                assert late_engine.returncode == -signal.SIGKILL
                assert busy_engine.poll() is None
                nursery.cancel_scope.cancel()
        trio.run(main)
    finally:
        for p in (stand_in, busy_engine, late_engine):
            if p.poll() is None:
                p.kill()
            p.wait()
        ours.close()
        theirs.close()


def test_the_supervisors_own_stop_is_not_taken_for_the_zygotes_silence(monkeypatch):
    """The silence bound was measured on the supervisor's clock whether or not the
    supervisor itself was running to hear: `wsuper up` stopped by Ctrl-Z (its
    process group, the zygote with it), paused by a debugger or starved by the
    machine's load for longer than ANSWER_SILENCE while a start waited woke up
    past the bound and failed that start at once ("the zygote said nothing ...
    stopped or wedged"), before the zygote (going on again with it) or the
    reader of its lines (its answer in the socket already) had a turn; a
    critical compartment's start then stopped the whole system.  Time the
    supervisor did not run is not the zygote's silence: here the whole loop is
    blocked (time.sleep, as a stopped process) past the bound with the start
    waiting, and the zygote answers just after; the start gets its engine."""
    import time
    from compartments.limits import Limits
    monkeypatch.setattr(process, "ANSWER_SILENCE", 1.0)
    # (one look of the silence is counted whole, however late: a fifth of the bound)
    monkeypatch.setattr(process, "SILENCE_LOOK", 0.2, raising=False)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    stand_in = subprocess.Popen(["sleep", "60"])          # stands for the zygote's process
    zygote = _zygote_of(stand_in, ours)
    zygote.pid = os.getpid()
    zygote._ids = iter(range(1, 100))
    zygote._lock = trio.Lock()
    engine = subprocess.Popen(["sleep", "60"])

    class Spec:
        limits = Limits(start_time=0.1)

        def to_json(self):
            return b"{}"

    async def stopped_then_answer():
        await trio.lowlevel.wait_readable(theirs)
        _line, fds, _flags, _addr = socket.recv_fds(theirs, 1 << 16, 4)
        for fd in fds:
            os.close(fd)
        time.sleep(2.0)           # the whole process stopped: nothing runs meanwhile
        await trio.sleep(0.1)     # the zygote, going on with it, answers at once
        theirs.sendall(b'{"pid": %d, "id": 1}\n' % engine.pid)

    try:
        async def main():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(zygote.run)
                nursery.start_soon(stopped_then_answer)
                a, b = socket.socketpair()
                with a, b, trio.fail_after(20):
                    got = await zygote.spawn(Spec(), b.fileno())
                    assert got.pid == engine.pid
                nursery.cancel_scope.cancel()
        trio.run(main)
    finally:
        for p in (stand_in, engine):
            if p.poll() is None:
                p.kill()
            p.wait()
        ours.close()
        theirs.close()


def test_a_zygote_silent_under_a_supervisor_late_at_every_look_still_stalls():
    """Zygote._within discounts a look that came later than due (by more than
    SILENCE_LOOK) as time the supervisor did not run, counting only that look's
    own interval as silence.  But a late look never reached the bound check: once
    the counted silence was whole, the next look was due at once, and a
    supervisor late at every look (a machine so loaded, or a loop kept busy, that
    trio wakes the start past SILENCE_LOOK each time) discounted that look too,
    for ever.  A zygote truly stopped held the start waiting without end (and,
    in the shielded rest of a long request's send, the supervisor's task with
    it).  Here a mock clock makes every look late; the silent zygote must fail
    the start, in looks, as the docs promise."""
    import trio.testing
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    stand_in = subprocess.Popen(["sleep", "60"])
    zygote = _zygote_of(stand_in, ours)
    clock = trio.testing.MockClock(autojump_threshold=0)
    looks = []

    class Late(trio.abc.Instrument):
        # each step of the start's task comes 2.4 looks late (the supervisor busy,
        # or the machine loaded): every look is late, even one due at once
        def before_task_step(self, task):
            if task is starting:
                clock.jump(process.SILENCE_LOOK * 2.4)

    starting = None

    async def silent():
        looks.append(trio.current_time())
        await trio.sleep_forever()

    try:
        async def main():
            nonlocal starting
            starting = trio.lowlevel.current_task()
            with pytest.raises(process.Stalled) as e:
                with trio.fail_after(1000):
                    await zygote._within(trio.current_time(), 5.0, silent,
                                         "a start waited for its answer")
            assert "said nothing for 5 s" in str(e.value), e.value
        trio.run(main, clock=clock, instruments=[Late()])
        assert len(looks) <= 5.0 / process.SILENCE_LOOK + 2, len(looks)
    finally:
        stand_in.kill()
        stand_in.wait()
        ours.close()
        theirs.close()
