"""The host out of threads: the supervisor's work that needs a worker thread (the
audit's and the log files' writes, file operations, the grants' opening, a
status's memory) waits until one can be started, and nothing of it is lost."""
import os
import re

import pytest
import trio

from supervisor import output, runtime, threads

HERE = os.path.dirname(os.path.abspath(__file__))
SUPERVISOR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "supervisor")


@pytest.fixture
def no_thread(monkeypatch):
    """The next `left["n"]` thread starts fail as the kernel fails them past
    RLIMIT_NPROC, a pids cgroup's limit or out of memory (CPython: RuntimeError
    "can't start new thread"); trio's idle workers are gone (they leave after
    10 s idle), so each to_thread needs a new one."""
    import trio._threads as tt
    real, left = tt.start_thread_soon, {"n": 0, "failed": 0}

    def start(fn, deliver, name=None):
        if left["n"]:
            left["n"] -= 1
            left["failed"] += 1
            raise RuntimeError("can't start new thread")
        return real(fn, deliver, name)
    monkeypatch.setattr(tt, "start_thread_soon", start)
    return left


def test_the_audit_and_the_log_files_wait_for_a_thread_and_lose_nothing(tmp_path, no_thread):
    """A review of the host running out: a worker thread that could not be started
    (the operator's processes at their RLIMIT_NPROC, a pids cgroup full, no memory
    for a stack) raised RuntimeError out of the audit's writer: the supervisor
    ended in a traceback (ExceptionGroup ... RuntimeError: can't start new
    thread), every compartment with it, the run's last records unwritten.  Seen
    with `wsuper up` in a pids cgroup, its limit set to the tasks it had, after 10
    s idle (trio's idle workers leave), and one `wsuper call`."""
    told, failed = [], []
    threads.on_shortage = told.append
    threads._said_at = None
    audit = runtime._Audit(str(tmp_path / "audit.jsonl"), "run")
    audit.open()
    files = output.LogFiles(str(tmp_path), on_failed=failed.append)

    async def main():
        no_thread["n"] = 3
        audit.add({"event": "call", "time": 0.0})
        files.add("app", "app 1")
        await audit.flush(failed.append)
        await files.flush()
        no_thread["n"] = 1                 # another at once: waited for, not said again
        files.add("app", "app 2")
        await files.flush()
    try:
        trio.run(main)
    finally:
        threads.on_shortage = None
        audit.close()
        files.close()
    assert no_thread["failed"] == 4 and not failed and audit.failed is None
    assert '"event":"call"' in (tmp_path / "audit.jsonl").read_text()
    assert (tmp_path / "app.log").read_text() == "app 1\napp 2\n"
    # told once it began, and once it was over
    assert len(told) == 2 and "cannot start a thread" in told[0] and \
        "can't start new thread" in told[0] and "threads can be started again" in told[1], told


def test_a_wait_for_a_thread_ends_with_its_callers_deadline(no_thread):
    """A shortage that lasts is waited out only as long as the caller would wait for
    the work itself (a file operation's IO_DEADLINE, the stop's last writes)."""
    ran = []

    async def main():
        no_thread["n"] = 10 ** 9
        with trio.move_on_after(0.3):
            await threads.run_sync(ran.append, 1)
    trio.run(main)
    assert ran == [] and no_thread["failed"] >= 2


def test_a_wait_for_a_thread_without_a_deadline_ends_at_the_stop(no_thread):
    """Work with no deadline of its own (noting the grants at start-up) waited for a
    thread for as long as the shortage lasted, and `wsuper stop` or SIGTERM with
    it (seen in a pids cgroup of 8 tasks: 'stopping', then nothing)."""
    ran = []

    async def main():
        no_thread["n"] = 10 ** 9
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_later, stop)
            with pytest.raises(threads.NoThread):
                with trio.fail_after(10):         # a bound on the test, not its timing
                    await threads.run_sync(ran.append, 1, give_up=stop)
    trio.run(main)
    assert ran == []


async def _set_later(event):
    await trio.sleep(0.2)
    event.set()


def test_an_error_of_the_work_itself_is_not_taken_for_a_shortage(no_thread):
    def work():
        raise RuntimeError("can't start new thread")     # the work's own, not trio's
    with pytest.raises(RuntimeError):
        trio.run(threads.run_sync, work)


def test_the_supervisor_starts_no_worker_thread_but_through_threads_run_sync():
    """One choke point: every worker thread of the supervisor's event loop is
    started by threads.run_sync (a to_thread.run_sync elsewhere would end the
    supervisor in a traceback when the host has no thread left to give)."""
    found = []
    for name in sorted(os.listdir(SUPERVISOR)):
        if name.endswith(".py") and name != "threads.py":
            with open(os.path.join(SUPERVISOR, name)) as f:
                for n, line in enumerate(f, 1):
                    if re.search(r"to_thread\.run_sync|start_thread_soon", line):
                        found.append(f"{name}:{n}: {line.strip()}")
    assert found == []


_HARNESS = """
import sys, threading
import trio._threads as tt
fail_names, fail_workers = sys.argv[1].split(","), int(sys.argv[2])
real_start, real_soon, left = threading.Thread.start, tt.start_thread_soon, [fail_workers]

def start(self):
    if self.name in fail_names:
        raise RuntimeError("can't start new thread")
    return real_start(self)

def soon(fn, deliver, name=None):
    if left[0]:
        left[0] -= 1
        raise RuntimeError("can't start new thread")
    return real_soon(fn, deliver, name)
threading.Thread.start, tt.start_thread_soon = start, soon
from supervisor import cli, fastlane
if "fastlane" in fail_names and fastlane.Lane is not None:
    def lane(*args):       # its C thread: pthread_create's EAGAIN
        raise BlockingIOError(11, "Resource temporarily unavailable")
    fastlane.Lane = lane
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("fails", ["terminal", "lane", "workers", "fastlane"])
def test_up_without_a_thread_to_give_at_start_never_ends_in_a_traceback(tmp_path, fails):
    """`wsuper up` under a process limit it reaches as it starts (seen in a pids
    cgroup of 3 to 9 tasks): the terminal's threads, the fast lane's host worker,
    or trio's worker thread for the admin socket's bind (trio binds a Unix socket
    in one) could not be started, and `up` ended in a traceback; the fast lane's
    C thread could not, and `up` said only "[Errno 11] Resource temporarily
    unavailable", exit 1.  Now the
    terminal's is a refusal, one line, exit 2; the lane's calls are served from
    the event loop (said once), and without the fast lane its calls go through
    Python; the bind needs no thread, and trio's worker threads are waited for."""
    import subprocess
    import sys

    from tests.conftest import EXAMPLES, ROOT
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nlogs = "logs"\n'
        f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
        f'[compartments.app]\nmodule = "{EXAMPLES}/hello.wat"\n'
        f'[compartments.app.grants]\ncalc = {{ compartment = "calc" }}\n'
        f'log = {{ host = "log" }}\n')
    names, workers = {"terminal": ("wsuper terminal", 0), "lane": ("wsuper-lane-host", 0),
                      "workers": ("", 3), "fastlane": ("fastlane", 0)}[fails]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "rt")}
    os.mkdir(tmp_path / "rt", 0o700)
    r = subprocess.run([sys.executable, "-c", _HARNESS, names, str(workers), "up",
                        str(tmp_path / "system.toml")], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=env)
    assert "Traceback" not in r.stderr, r.stderr
    if fails == "terminal":
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("wsuper: error: cannot start the terminal's thread "
                                   "(can't start new thread)"), r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert "2 + 3 = 5" in r.stdout
    from supervisor import fastlane
    if fails == "lane":
        if fastlane.enabled() is None:
            assert r.stderr.count("the fast lane's host worker cannot start") == 1, r.stderr
    elif fails == "fastlane":
        if fastlane.enabled() is None:
            assert r.stderr.count("note: the fast lane cannot start (Resource temporarily "
                                  "unavailable): calls between compartments run slower") \
                == 1, r.stderr
    else:
        assert r.stderr.count("cannot start a thread (can't start new thread") == 1, r.stderr
        assert r.stderr.count("threads can be started again") == 1, r.stderr
    assert "2 + 3 = 5" in (tmp_path / "logs" / "app.log").read_text()


def test_a_zygote_that_cannot_fork_as_it_begins_says_so_in_one_line():
    """The zygote forks as it begins (a child that tries the namespaces, another that
    compiles the warm-up module): under a process limit (a pids cgroup of 3 tasks)
    the fork's BlockingIOError ended it in a traceback on the terminal `up` ran
    in.  One line now, exit 1 (the supervisor says the zygote is gone)."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    code = """
import os, socket, sys
from compartments import confine, zygote
def prepare():
    raise BlockingIOError(11, "Resource temporarily unavailable")
confine.prepare = prepare
a, b = socket.socketpair()
sys.argv = ["zygote", str(b.fileno()), str(os.getppid())]
zygote.main()
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert r.stderr == "wsuper zygote: cannot go on: Resource temporarily unavailable\n", \
        r.stderr
