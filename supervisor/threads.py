"""Work in a worker thread of trio's, waiting out a host that cannot start one.

A thread that cannot be started (the user's processes at RLIMIT_NPROC, which
counts threads; a pids cgroup at its limit; no memory for a stack) made
`trio.to_thread.run_sync` raise RuntimeError("can't start new thread") in the
task that asked: out of the audit's or the log files' writer, a file operation,
a grant's opening, it ended the supervisor in a traceback, and every
compartment with it.  trio's idle workers leave after 10 s, so any quiet moment
makes the next write need a new thread.  Every worker thread the supervisor's
loop uses is asked for here (tests/unit/test_thread_shortage.py checks none is
asked for elsewhere): a shortage is waited out, retried at growing intervals
(up to RETRY_MAX seconds), for as long as the caller waits for the work itself
(its own deadlines and cancel scopes end the wait too, as they end the work).
The operator is told once when a shortage begins, and once when it is over (a
shortage that comes and goes is said at most once a minute: QUIET).
"""
from __future__ import annotations

import time

import trio

RETRY_FIRST = 0.01      # seconds before the first retry of a thread that could not start
RETRY_MAX = 0.5         # ... and at most between two
QUIET = 60.0            # seconds after a shortage was said before another is (one that
                        # comes and goes, a task at the limit's edge, is said once a minute)

#: told(text) when a shortage begins and when it is over (the supervisor's `say`);
#: None: nobody is told
on_shortage = None
_short = False                    # a thread could not be started, none has since
_said = False                     # ... and that was said: its end will be too
_said_at: float | None = None     # when a shortage's end was last said (time.monotonic)


def _tell(text: str):
    if on_shortage is not None:
        try:
            on_shortage(text)
        except Exception:   # noqa: BLE001 - saying it may not end the work
            pass


def short() -> bool:
    """Whether a thread could not be started, and none has been since."""
    return _short


class NoThread(Exception):
    """No thread could be started before `give_up` was set (run_sync)."""


async def run_sync(fn, *args, give_up: trio.Event | None = None, **kw):
    """trio.to_thread.run_sync(fn, *args, **kw), once a thread can be started.
    `give_up`: an event (the system's stop) that ends the wait for one with
    NoThread, for work with no deadline of its own: waiting for a thread at
    start-up, a stop (`wsuper stop`, SIGTERM) waited as long as the shortage."""
    global _short, _said, _said_at
    delay = RETRY_FIRST
    while True:
        if give_up is not None and give_up.is_set() and _short:
            raise NoThread()
        began = False

        def work():
            nonlocal began
            began = True
            return fn(*args)
        try:
            result = await trio.to_thread.run_sync(work, **kw)
        except RuntimeError as e:
            if began:                      # the work's own error: it ran
                raise
            if not _short:
                _short = True
                _said = _said_at is None or time.monotonic() - _said_at >= QUIET
                if _said:
                    _tell(f"cannot start a thread ({e}: the process or thread limit, "
                          f"RLIMIT_NPROC or a pids cgroup, reached, or no memory): the "
                          f"audit, the log files and file operations wait until one can be")
            if give_up is None:
                await trio.sleep(delay)
            else:
                with trio.move_on_after(delay):
                    await give_up.wait()
            delay = min(delay * 2, RETRY_MAX)
            continue
        if _short:
            _short = False
            if _said:
                _said_at = time.monotonic()
                _tell("threads can be started again: the audit, the log files and file "
                      "operations go on")
        return result
