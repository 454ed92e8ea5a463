"""SIGINT, SIGTERM and SIGHUP outside the running system's receiver (`Supervisor._signals`).

`wsuper up` reads, checks and compiles the system before it runs (a compile may take
seconds), and the receiver lives only while the system runs.  A signal before it
met Python's handlers: SIGINT a KeyboardInterrupt traceback out of whatever was
under way (an import, a compile's wait), SIGTERM's default killed the supervisor
without a word; one after it (the system's last writes, its sockets' removal) killed
it before its sockets were removed.  README promises 130 for Ctrl-C and 143 for
SIGTERM, a stop said once.

So, for `up`: before the system runs, the first such signal raises `StoppedAtStart`
(`cli.main` says it and exits 128 + the signal's number), and every later one is
held; from `trio.run` on (`hold`), each is held, never raised inside trio, and the
receiver, once installed, takes those held (`take`) as if it had received them.
No I/O here: the handlers only raise or record."""
from __future__ import annotations

import signal

#: the signals that stop `wsuper up`: SIGHUP too (the terminal it ran in closed, an
#: ssh session dropped), whose default killed the supervisor without a word, its
#: audit without `run stopped`, its sockets left
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_held: list[int] = []
#: those ignored when `up` began (`nohup`, SIGINT of a background job `&` of a
#: script): they stay ignored, as the one who started it asked
_ignored: set[int] | None = None


def stopping() -> tuple[int, ...]:
    """The signals that stop the system: STOPPING less those ignored when it began."""
    global _ignored
    if _ignored is None:
        _ignored = {sig for sig in STOPPING if signal.getsignal(sig) == signal.SIG_IGN}
    return tuple(sig for sig in STOPPING if sig not in _ignored)


class StoppedAtStart(BaseException):
    """A SIGINT or SIGTERM before the system ran: `up` stops, nothing started."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum, _frame):
    # held first: Python runs a handler wherever the main thread is, a weakref's
    # callback or a __del__ among them (an import's module lock has one), where an
    # exception is printed as "ignored" and dropped.  Raised there alone, the signal
    # was lost: a traceback, and `up` went on to run its system, deaf to the SIGTERM
    # it had been sent (several at once come as one).  Held, the receiver takes it.
    _held.append(signum)
    hold()                       # the first one decides; any later one is only held
    raise StoppedAtStart(signum)


def _unraisable(hook):
    """sys.unraisablehook: a StoppedAtStart dropped where exceptions cannot go (held
    already: `_raise`) is no traceback; anything else goes to `hook`."""
    def unraisable(info):
        if not isinstance(info.exc_value, StoppedAtStart):
            hook(info)
    unraisable.startsignals = True
    return unraisable


def _hold(signum, _frame):
    _held.append(signum)


def installed() -> bool:
    """Whether this process installed the handlers (`up` did)."""
    return any(signal.getsignal(sig) in (_raise, _hold) for sig in STOPPING)


def stop_at_start():
    """Until `hold`: a SIGINT or SIGTERM ends the start-up (StoppedAtStart)."""
    import sys
    if not getattr(sys.unraisablehook, "startsignals", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    for sig in stopping():
        signal.signal(sig, _raise)
    # `wsuper up S &` on a terminal with `stty tostop`: the first line written there
    # (the supervisor's, or a plugin's it shows) stopped the whole process, every
    # compartment's calls and `wsuper stop` with it.  Ignored, the write goes through
    # (POSIX); a terminal that does not keep up costs lines only (output.Output)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def hold():
    """From now on a SIGINT or SIGTERM is held for the system's receiver (`take`):
    never an exception at an arbitrary point of trio's (or the stop's) code."""
    for sig in stopping():
        signal.signal(sig, _hold)


def stop_if_held():
    """At the end of the start-up: a signal held already is one whose StoppedAtStart
    was dropped (`_raise`): raised now, before anything runs."""
    if _held:
        raise StoppedAtStart(_held[0])


def take() -> list[int]:
    """The signals held since the last take, oldest first."""
    held = _held[:]
    del _held[:len(held)]
    return held
