"""Restart decisions for one compartment (pure: the runtime carries them out).

Modes, as in Erlang/OTP supervisors:
  permanent  restarted whenever its engine stops (a program is run again)
  transient  restarted only when it stops abnormally: its engine died, broke
             the protocol, or its program trapped (the default)
  never      never restarted

Intensity: more than `max_restarts` restarts within `restart_window` seconds
and the compartment has failed for good.  Each restart in a window waits
twice as long as the one before (from `restart_delay`, at most MAX_DELAY).
"""
from __future__ import annotations

from collections import deque

import attrs

MODES = ("permanent", "transient", "never")
MAX_DELAY = 10.0


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
        self._restarts: deque[float] = deque()

    def decide(self, now: float, abnormal: bool) -> Decision:
        p = self.policy
        if p.mode == "never" or (p.mode == "transient" and not abnormal):
            return Decision("stop", reason=f"restart = {p.mode!r}")
        while self._restarts and self._restarts[0] <= now - p.restart_window:
            self._restarts.popleft()
        if len(self._restarts) >= p.max_restarts:
            return Decision("fail", reason=f"{len(self._restarts)} restarts within "
                                           f"{p.restart_window:g} s (max_restarts = {p.max_restarts})")
        delay = min(p.restart_delay * (2 ** len(self._restarts)), MAX_DELAY)
        self._restarts.append(now)
        return Decision("restart", delay, len(self._restarts))


class Throttle:
    """At most `per_second` terminal lines per key (a caller) in each one-second
    window; the rest are counted, and the count is reported with the next line
    shown.  A compartment that floods denials cannot flood the terminal."""

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

