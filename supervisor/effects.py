"""What the router asks the runtime to do (pure data).

The router (router.py) never performs I/O: each of its entry points returns a
list of these effects, in order, and the runtime (runtime.py) performs them.

Effects are values: nobody changes one once made.  Those made on every call
(`Send`, `HostCall`, `Audit`) are plain slotted classes, not frozen ones, only
because a frozen attrs class sets each field through a method call (~45 ns a
field; docs/performance.md, "Host calls, fourth pass").
"""
from __future__ import annotations

import attrs


@attrs.define
class Send:
    """Write these bytes (one or more framed messages) to the peer."""
    peer: int
    data: bytes


@attrs.frozen
class Close:
    """Close this peer's connection (an Abort was sent, or it is being cut off)."""
    peer: int
    reason: str


# Started, StartFailed and Exited name the engine connection (`peer`) they are
# about, so the runtime can tell an old incarnation's news from the current one's.

@attrs.frozen
class Started:
    """A compartment's engine is ready; `program`: it has a `_start` to run."""
    compartment: str
    program: bool
    peer: int = attrs.field(default=0, eq=False)


@attrs.frozen
class StartFailed:
    compartment: str
    reason: str
    peer: int = attrs.field(default=0, eq=False)


@attrs.frozen
class Exited:
    """A compartment's program ended: an exit code, or an error (a trap)."""
    compartment: str
    exit_code: int | None
    error: str | None = None
    peer: int = attrs.field(default=0, eq=False)


@attrs.frozen
class Notice:
    """A line for the operator about something the supervisor did or refused.
    `peer`: the name of the peer whose input caused it (such lines are throttled
    per peer, as denials are per caller: a peer can cause them at any rate)."""
    text: str
    peer: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Denied:
    """A call refused by attenuation: shown on the terminal (throttled per caller)."""
    text: str
    caller: str = ""


@attrs.define
class Audit:
    """One capability call, for the audit log."""
    record: dict


@attrs.define
class HostCall:
    """Serve a call on a host object (hostcaps.py), then report back with
    `Router.host_returned(token, ...)` or `Router.host_failed(token, ...)`.

    `max_bytes`: the largest results content the caller accepts; `caller`: the
    peer that called (`owner`: the compartment whose grant the object came through,
    which a caller it was handed on to is not)."""
    token: int
    kind: str
    owner: str
    served: object
    interface_id: int
    method_id: int
    content: object
    max_bytes: int
    caller: str = ""


@attrs.frozen
class HostRelease:
    """Nothing refers to this host object any more: release what it holds."""
    kind: str
    served: object
