"""What happens as compartments start, run and stop (pure: the runtime carries it out).

Owns: `Supervision` (one compartment's restart decisions), `Lifecycle` (the
whole system: events in, actions out), and the rate limiters every part uses
(`TokenBucket`, and `Throttle` for terminal lines).  Must not: touch a
process, a socket or the clock (time is always passed in).

Restart modes, as in Erlang/OTP supervisors:
  permanent  restarted whenever its engine stops (a program is run again)
  transient  restarted only when it stops abnormally: its engine died, broke
             the protocol, or its program trapped (the default)
  never      never restarted

Intensity: more than `max_restarts` restarts within `restart_window` seconds
and the compartment has failed for good.

Back-off: the first restart waits `restart_delay`; each further one in a row
waits twice as long as the one before (from at least MIN_DELAY, at most
MAX_DELAY, or `restart_delay` itself if that is longer).  A row ends when an
incarnation that became ready ran at least STEADY seconds (or `restart_window`,
if longer) from its restart: one that never became ready (a start function
spinning until start_time, 30 s, killed it) ends none, however long it took.
The back-off does not forget with the window: a compartment that crashes at
once, with `restart_delay = 0` and a window shorter than a restart takes, was
restarted ~30 times a second for ever, `max_restarts` never tripping (an
outside review); now its restarts slow to one each MAX_DELAY.
"""
from __future__ import annotations

from collections import deque

import attrs

MODES = ("permanent", "transient", "never")
MAX_DELAY = 10.0
MIN_DELAY = 0.01       # where the doubling starts when restart_delay is 0
STEADY = 10.0          # an incarnation that ran this long ends a row of restarts


@attrs.frozen
class RestartPolicy:
    mode: str = "transient"
    max_restarts: int = 3
    restart_window: float = 60.0
    restart_delay: float = 0.1
    critical: bool = False


@attrs.frozen
class Decision:
    action: str            # "restart" | "stop" | "fail"
    delay: float = 0.0
    attempt: int = 0       # which restart within the window (1-based)
    reason: str = ""


class Supervision:
    def __init__(self, policy: RestartPolicy):
        self.policy = policy
        self._restarts: deque[float] = deque()   # restart times within the window
        self._row = 0                  # restarts in a row, none of them steady since
        self._resumed = 0.0            # when the last restart's incarnation began

    def decide(self, now: float, abnormal: bool, ready: bool = True) -> Decision:
        """`ready`: the incarnation that stopped had become ready (a failed start had
        not): only such a one, run steadily, ends a row of restarts."""
        p = self.policy
        if p.mode == "never" or (p.mode == "transient" and not abnormal):
            return Decision("stop", reason=f"restart = {p.mode!r}")
        while self._restarts and self._restarts[0] <= now - p.restart_window:
            self._restarts.popleft()
        if len(self._restarts) >= p.max_restarts:
            return Decision("fail", reason=f"{len(self._restarts)} restarts within "
                                           f"{p.restart_window:g} s (max_restarts = {p.max_restarts})")
        if self._row and ready and now - self._resumed >= max(STEADY, p.restart_window):
            # the last incarnation ran steadily.  Not a failed start, however long it
            # took: a start function spinning until start_time (30 s) killed it took
            # longer than STEADY each time, and every restart waited restart_delay
            # (0: at once, for ever, under a window max_restarts never tripped in)
            self._row = 0
        # doubled up to MAX_DELAY, but never below restart_delay itself: its range goes
        # to 60 s, and 60 was cut to 10 (docs/policy-reference.md: the first waits it)
        delay = p.restart_delay if not self._row else \
            min(max(p.restart_delay, MIN_DELAY) * (2 ** min(self._row, 32)),
                max(MAX_DELAY, p.restart_delay))
        self._row += 1          # (2 ** 1024 is past a float: capped above, at 32)
        self._resumed = now + delay
        self._restarts.append(now)
        return Decision("restart", delay, len(self._restarts))


class TokenBucket:
    """`rate` events per second, in bursts of up to `rate` (at least one): the one
    rate limiter (a grant's calls_per_second, a log's log_rate, engine stderr)."""

    def __init__(self, rate: float, now: float):
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.refilled = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def give_back(self):
        """Return the token the last take() spent (the event it admitted did not happen)."""
        self.tokens = min(max(self.rate, 1.0), self.tokens + 1)

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) / self.rate)


class Throttle:
    """At most `per_second` terminal lines per key (a caller) in each one-second
    window; the rest are counted, and the count is reported with the next line
    shown, or, when none follows, as its peer goes or the system stops (`hidden`).
    A compartment that floods denials cannot flood the terminal."""

    def __init__(self, per_second: int = 5):
        self.per_second = per_second
        self._windows: dict[str, list] = {}   # key -> [window start, shown, suppressed]

    def admit(self, key: str, now: float) -> tuple[bool, int]:
        """(show this line?, lines suppressed since the last one shown)."""
        w = self._windows.setdefault(key, [now, 0, 0])
        suppressed = 0
        if now - w[0] >= 1.0:
            suppressed, w[:] = w[2], [now, 0, 0]
        if w[1] < self.per_second:
            w[1] += 1
            return True, suppressed
        w[2] += 1
        return False, 0

    def hidden(self, key: str) -> int:
        """The lines of `key` counted and not said yet, taken (0 if none): its peer
        went, or the system stops, and no line may follow to say them with."""
        w = self._windows.pop(key, None)
        return w[2] if w is not None else 0

    def keys(self) -> list:
        return list(self._windows)



# ------------------------------------------------------------------ the system's lifecycle


@attrs.frozen
class Say:
    """A line for the operator (about `compartment`, if it is about one)."""
    text: str
    compartment: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Run:
    """Run the compartment's program (Engine.run)."""
    name: str


@attrs.frozen
class Restart:
    """Take the compartment's engine down and start a new one after `delay` seconds."""
    name: str
    delay: float
    reason: str


@attrs.frozen
class Fail:
    """The compartment is down for good: take its engine down; calls to it fail."""
    name: str
    reason: str


@attrs.frozen
class Stop:
    """The compartment is left stopped (restart policy): take its engine down, if it
    still runs (its program ended abnormally); calls to it fail."""
    name: str
    reason: str


@attrs.frozen
class Finish:
    """Stop the system; `wsuper up` exits with `code`."""
    code: int


class Lifecycle:
    """What happens to the system as its compartments start, run and stop (pure).

    The runtime reports events (an engine is ready, failed to start, its program
    ended, its engine stopped, a signal arrived) and performs the actions each
    returns: Say, Run, Restart, Fail, Stop, Finish.  Rules:

    * A compartment that fails to start is an abnormal stop like any other: its
      restart policy decides (a hostile module that never starts cannot hold
      the others back).  A compartment that never started and will not be
      restarted is *settled*.
    * Once every compartment is ready, settled, or has failed its first start
      (it may be restarting: its calls wait for it, each at most its call_time),
      each program (`_start`) of a compartment ready then runs; a compartment
      ready later runs its program then, and a restarted one runs it again (once
      its new incarnation is ready).  Waiting for restarts let one whose start
      loops until start_time, restarted within max_restarts in restart_window
      (the defaults: 30 s, 3 in 60 s), hold every program back for good (an
      outside review).  If every compartment is settled and none ever became
      ready, the system stops, exit code 1.
    * A program that ends with exit code 0 stopped normally; a non-zero exit, a
      trap, an engine that died or broke the protocol, or a failed (re)start is
      abnormal.  The restart policy (`Supervision`) decides what follows.
    * A compartment that fails for good makes the exit code 1; a `critical` one
      stops the system.  An abnormal stop that is not restarted makes it 1 too, and
      is as final: a `critical` compartment's stops the system.  A stop (`wsuper
      stop`) while a compartment that has never been ready restarts makes it 1 too.
    * The system is done when it has programs, none is running or restarting,
      and nothing is exported to the outside (then it serves until stopped).  A
      compartment has a program if its module exports _start, as `up` checked it
      (`programs`), or as its engine says at a start: one whose every start
      failed has one too (known only from its engine, the only program of a
      system beside servers that never started left it serving for ever, as if
      it had none: an outside review).
    * SIGINT and SIGTERM stop it with exit code 128 + the signal (130, 143).

    Each incarnation of a compartment has a generation; an event about an older
    one (its engine's exit after it was replaced) changes nothing.
    """

    def __init__(self, compartments: dict, holders: dict | None = None,
                 external: bool = False, programs=()):
        """`compartments`: name -> RestartPolicy, in start order; `holders`: name ->
        the compartments granted it (for messages); `external`: something is exported;
        `programs`: the compartments whose module exports _start (preflight)."""
        self.policies = dict(compartments)
        self.holders = holders or {}
        self.external = external
        self.supervision = {name: Supervision(p) for name, p in self.policies.items()}
        self.generation = dict.fromkeys(self.policies, 0)
        self.ready: set[str] = set()
        self.settled: set[str] = set()           # never started, and never will
        self.tried: set[str] = set()             # failed a start before it was ever ready
        self.programs: set[str] = {n for n in programs if n in self.policies}
        self.running: set[str] = set()
        self.all_started = False
        self.stopping = False
        self.exit_code = 0
        self.state = dict.fromkeys(self.policies, "starting")
        self.restarts = dict.fromkeys(self.policies, 0)

    # ------------------------------------------------------------ events

    def started(self, name: str, program: bool) -> list:
        if self.stopping:
            return []
        self.ready.add(name)
        self.state[name] = "ready"
        if program:
            self.programs.add(name)
        else:                       # its engine's word: the module may have changed
            self.programs.discard(name)
        if self.all_started:                      # a restart: run its program again
            if program:
                self._run(name)
                return [Run(name)]
            return self._check_done()    # the system may have waited for its first start
        return self._all_ready()

    def _all_ready(self) -> list:
        """Every compartment is ready, settled, or failed its first start (restarting,
        it holds nobody back): the programs run."""
        if self.all_started \
                or len(self.ready) + len(self.settled) + len(self.tried) < len(self.policies) \
                or len(self.ready | self.settled | self.tried) < len(self.policies):
            return []                                   # (the sum first: O(1))
        if not self.ready:
            if len(self.settled) < len(self.policies):
                return []             # none ready yet, and one may be: its start runs them
            self.all_started = True
            return [Say("no compartment could start"), *self._finish(1)]
        self.all_started = True
        if not self.programs:
            # every one not ready named: one left stopped (restart = "never") or failed
            # for good after its failed start was said "all compartments ready"
            late = sorted(n for n in self.tried - self.ready if self.state[n] == "restarting")
            gone = [f"{n} ({'failed for good' if self.state[n] == 'failed' else 'left stopped'}"
                    f" after a failed start)" for n in sorted(self.settled - self.ready)]
            never = [f"{n} (it never started)" for n in self.policies
                     if n not in self.ready and n not in self.settled and n not in late]
            but = ([f"{', '.join(late)} (restarting after a failed start)"] if late else []) \
                + gone + never
            return [Say(f"all compartments ready but {', '.join(but)}; serving until Ctrl-C"
                        if but else "all compartments ready; serving until Ctrl-C")]
        # only the programs of incarnations that are ready now: one that became ready
        # and then stopped while others were still starting is restarting (its next
        # incarnation runs it once ready), failed for good, or left stopped.  Running
        # it anyway marked it running: its restart was skipped, or its missing engine
        # counted as one more failure (one crash then used up max_restarts = 1)
        runs = sorted(n for n in self.programs if self.state[n] == "ready")
        for n in runs:
            self._run(n)
        return [Run(n) for n in runs] + self._check_done()

    def _run(self, name: str):
        self.running.add(name)
        self.state[name] = "running"

    def start_failed(self, name: str, reason: str, now: float, told: str | None = None) -> list:
        """`reason` is said to the operator; `told` (if not `reason`) to its callers:
        a grant's host path is the operator's to know, not theirs."""
        if self.stopping or self.state[name] in ("stopped", "failed"):
            return []
        return [Say(f"compartment {name} failed to start: {reason}", name),
                *self._stopped(name, True, "it failed to start", now, why=told or reason)]

    def program_ended(self, name: str, exit_code: int | None, error: str | None,
                      now: float) -> list:
        """The program of the current incarnation ended.  Said more than once of one
        incarnation (the supervisor killed it for run_time, then its engine's
        answer to run() is lost), only the first counts: once it is restarting or
        has failed, its program is not running."""
        if name not in self.running or self.state[name] in ("restarting", "failed", "stopped"):
            return []
        if self.stopping:                          # we are stopping it ourselves
            self.running.discard(name)
            return [Say(f"stopped {name}", name)]
        if error is not None:
            return [Say(_failed(name, error), name),
                    *self._stopped(name, True, "its program failed", now, why=error)]
        return [Say(f"finished {name} exit={exit_code}", name),
                *self._stopped(name, exit_code != 0, f"its program ended (exit {exit_code})",
                               now)]

    def engine_stopped(self, name: str, generation: int, reason: str, now: float,
                       clean: bool = False) -> list:
        """The engine of incarnation `generation` is gone (it exited or was cut off).
        `clean`: it exited by itself with code 0 (the engine's end after its guest's
        exit: a program that called exit in a call it served, once run() is answered)."""
        if self.stopping or generation != self.generation.get(name) \
                or self.state[name] in ("stopped", "failed"):
            return []              # not its current incarnation, or already handled
        if clean and self.state[name] == "finished":
            # its program ended well (exit 0), and that exit ended the engine: no
            # failure (transient restarted it, counted against max_restarts)
            return []
        return self._stopped(name, True, reason, now)

    def signal(self, signum: int, signame: str) -> list:
        if self.stopping:
            return []
        return [Say(f"{signame}, stopping"), *self._finish(128 + signum, force=True)]

    def stop(self, code: int = 0) -> list:
        """Stop on request (an internal reason): exit with `code`, or what it already is.
        A compartment that has failed every start so far and is restarting makes it 1:
        it never started (a stop then exited 0, as if the system had worked)."""
        if self.stopping:
            return []
        never = sorted(n for n in self.tried - self.ready if self.state[n] == "restarting")
        if not never:
            return self._finish(code)
        return [Say(f"{n} never started (restarting after failed starts)", n) for n in never] \
            + self._finish(max(code, 1))

    # ------------------------------------------------------------ decisions

    def _stopped(self, name: str, abnormal: bool, reason: str, now: float,
                 why: str = "") -> list:
        """The current incarnation of `name` stopped: restart it, leave it, or give up.
        `why`: what caused `reason`, said already to the operator and handed to the
        calls its stop fails (Restart's and Stop's reason): the calls that waited for
        a start past start_time were told 'it failed to start', and the callers of
        a program that trapped 'its program failed', and nothing more (an outside
        review)."""
        policy = self.policies[name]
        told = f"{reason}: {why}" if why else reason
        # an incarnation that never became ready (a failed start, an engine lost while
        # starting) ends no row of restarts, however long it took (Supervision.decide)
        d = self.supervision[name].decide(now, abnormal,
                                          ready=self.state[name] not in ("starting",
                                                                         "restarting"))
        if d.action == "restart":
            self.generation[name] += 1
            self.restarts[name] += 1
            self.state[name] = "restarting"
            out = [Say(f"restarting {name} in {d.delay:g} s ({reason}; restart {d.attempt} "
                       f"of at most {policy.max_restarts} in {policy.restart_window:g} s)",
                       name),
                   Restart(name, d.delay, told)]
            if name not in self.ready and name not in self.tried and not self.stopping:
                self.tried.add(name)        # its first start failed: the others go on
                out += self._all_ready()
            return out
        if d.action == "fail":
            self.generation[name] += 1
            self.state[name] = "failed"
            holders = self.holders.get(name, ())
            fails = f"; calls from {', '.join(holders)} to it now fail" if holders else ""
            out = [Say(f"compartment {name} failed for good: {d.reason} (last: {reason}){fails}",
                       name),
                   Fail(name, f"{d.reason}; last: {told}")]
            self.exit_code = 1
            self.running.discard(name)
            if policy.critical:
                out += [Say(f"{name} is critical: stopping the system", name), *self._finish(1)]
            return out + self._settle(name) + self._check_done()
        out = []
        if abnormal:
            out.append(Say(f"compartment {name} stopped: {reason} ({d.reason})", name))
            # and stays so: an engine still there (a program that failed or exited
            # non-zero, a server too) served calls on, answered by a program the log
            # said had stopped (an outside review)
            out.append(Stop(name, f"stopped: {told} ({d.reason})"))
            # whether it ran a program, served calls, or never started: a server whose
            # engine died was not counted, and `wsuper stop` then exited 0 (a review)
            self.exit_code = 1
            self.state[name] = "stopped"
            if policy.critical:
                # left stopped after an abnormal stop, it is gone for good as surely as
                # one past max_restarts (restart = "never" went on without it, while
                # max_restarts = 0 stopped the system: an outside review)
                self.running.discard(name)
                return out + [Say(f"{name} is critical: stopping the system", name),
                              *self._finish(1)]
        elif self.state[name] == "running":
            self.state[name] = "finished"        # its program ended; it still serves calls
        self.running.discard(name)
        return out + self._settle(name) + self._check_done()

    def _settle(self, name: str) -> list:
        """It will not be restarted: if it never became ready, stop waiting for it."""
        if name in self.ready or self.stopping:
            return []
        self.settled.add(name)
        return self._all_ready()

    def _check_done(self) -> list:
        """Done once no program runs, nor will run again: a program whose compartment
        is restarting runs again once it is ready (the system ended, and its restart
        never came, if another program happened to end during the restart delay)."""
        if self.all_started and self.programs and not self.running and not self.external \
                and not any(self.state[n] == "restarting" for n in self.programs) \
                and not any(self.state[n] == "restarting" for n in self.tried - self.ready):
            return self._finish(0)
        return []

    def _finish(self, code: int, force: bool = False) -> list:
        if self.stopping:
            return []
        self.stopping = True
        if force or code:
            self.exit_code = code if force else max(self.exit_code, code)
        return [Finish(self.exit_code)]


def _failed(name: str, error: str) -> str:
    """What the operator is told of a program that failed with `error`.  The
    engine's words name the compartment already, for its callers ('compartment app
    trapped: ...', 'compartment app failed: ...'): said with the name once."""
    own = f"compartment {name} "
    if error.startswith(own + "failed: "):
        return error
    return f"compartment {name} failed: {error.removeprefix(own)}"
