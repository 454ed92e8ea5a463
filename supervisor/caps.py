"""Capability objects as the supervisor holds them, and the calls made on them (pure).

Every entry of a c-list (an export of the supervisor to a peer) is one of:
  Remote   an object hosted by a peer (an engine or an external client),
           known to us by that peer's export id
  Proxy    a compartment's main object, as granted by name in the system file;
           it outlives the compartment's engines (restarts)
  Host     an object the supervisor serves itself (a log, a directory, ...);
           `served` is the host layer's state for it, opaque here
  Wrapped  a capability seen through a membrane (membrane.py)
Identity matters: two objects are the same capability only if they are the
same Python object.  Nothing here does I/O.
"""
from __future__ import annotations

import attrs

from capnp_schemas.text import KEPT_REASON_LIMIT, bounded


class Cap:
    """A capability object.  `refs`: c-list entries and holders in the supervisor."""
    refs: int = 0


class Remote(Cap):
    """An object hosted by a peer, known to us by the peer's export id."""

    def __init__(self, peer, import_id: int):
        self.peer = peer
        self.import_id = import_id
        self.refs = 0

    def __repr__(self):
        return f"Remote({self.peer.name}#{self.import_id})"


class Proxy(Cap):
    """A compartment's main object, as granted by name: stable across its lifetime.
    Calls wait (`queue`) while the compartment starts or restarts (Router.stop_engine)
    and fail once it is gone and not restarting, or failed for good."""

    def __init__(self, compartment: str, interface_id: int | None, extends: tuple = (),
                 sealed: bool = False):
        self.compartment = compartment
        self.interface_id = interface_id
        # its interface's schema (with what it extends) has no capability anywhere:
        # calls on it pass none, either way (Router._deliver, Router._answer), as
        # `wsuper check --reach` assumes
        self.sealed = sealed
        # what a call on it may name: its interface, and every one that extends (a
        # Calc extends(Base) is called reset with Base's id, as Cap'n Proto calls
        # an inherited method with its declarer's)
        self.interface_ids = frozenset({interface_id, *extends})
        self.target: Remote | None = None
        self.error: str | None = None
        self.error_type = "disconnected"
        self.queue: list = []
        self.refs = 0
        # its engine closed its connection (Router.engine_closed): its main object,
        # whose calls wait meanwhile, until the engine is lost
        self.holding: Remote | None = None
        # its engine is lost and nobody has said yet whether it restarts: (that peer,
        # what its calls fail with if it does not: Router.engine_ended)
        self.ending: tuple | None = None

    def __repr__(self):
        return f"Proxy({self.compartment})"


class Promised(Cap):
    """A capability in the result of a call `peer` made to us that has not returned
    yet, passed by the peer in a call (rpc.capnp's receiverAnswer): held like any
    capability; calls on it wait (`queue`: (call, first cap, membranes crossed))
    until the answer returns, then go to what it resolved to (`target`), or fail
    with its `error` if the answer failed or the peer went."""

    def __init__(self, peer, answer_id: int, transform: tuple):
        self.peer = peer
        self.answer_id = answer_id
        self.transform = transform
        self.target: Cap | None = None
        self.error: str | None = None
        self.error_type = "failed"
        self.queue: list = []
        self.refs = 0
        #: the promises that settled on this one before it settled itself (each holds
        #: it): they are settled again, on what this one settles on, when it does
        #: (Router._settle_now), so that no promise keeps a chain of them
        self.followers: list = []
        # let go of (nobody in the supervisor held it): it never goes on to what its
        # answer returns, and is never reached again (Router._held, _let_go_promise)
        self.released = False

    def __repr__(self):
        return f"Promised({self.peer.name}#{self.answer_id})"


class Host(Cap):
    """An object the supervisor serves: `kind` is a host capability kind ("log",
    "directory", ...) or "gateway"; `owner` the compartment it was granted to;
    `label` names it in errors and the audit ("app.data", "app.data>Directory.open")."""

    def __init__(self, kind: str, owner: str, served=None, label: str | None = None):
        self.kind = kind
        self.owner = owner
        self.served = served
        self.label = label
        self.released = False
        self.refs = 0

    def __repr__(self):
        return f"Host({self.kind} of {self.owner})"


class Wrapped(Cap):
    """A capability seen through a membrane (the attenuation of one grant)."""

    def __init__(self, target: Cap, membrane, label: str):
        self.target = target
        self.membrane = membrane
        self.label = label
        self.refs = 0

    def __repr__(self):
        return f"Wrapped({self.label})"


@attrs.define
class Call:
    """A call on its way: what is called, with what, and where the answer goes."""
    interface_id: int
    method_id: int
    content: object           # protocol.Content
    caps: tuple
    reply: tuple              # (peer, answer id)
    #: the caller (its Peer, or router._Gone) that passed the caller of this call
    #: what it calls (Peer.passed): the capabilities in its answer count to that
    #: caller's share of the c-list they enter (Router._check_handles), as those
    #: it passed did
    charged: object = None


class CallError(Exception):
    """The call fails with this reason; `type` is rpc.capnp's Exception.Type.  The
    reason is cut at text.KEPT_REASON_LIMIT characters: it is copied into every call
    and promise that fails with it, and into the audit, and may hold text a peer
    chose (a review: one 400 KB reason, copied into each of 1,500 promises, took
    the supervisor from 50 to 624 MiB)."""

    def __init__(self, reason: str, type: str = "failed"):
        reason = bounded(reason, KEPT_REASON_LIMIT)
        super().__init__(reason)
        self.reason = reason
        self.type = type


class Denial(CallError):
    """Refused by attenuation (an allow-list, revocation, a quota)."""


def describe(cap) -> str:
    """What a capability is, for an error message or the audit (text: what a call
    refused before it reached one was made on)."""
    if isinstance(cap, str):
        return cap
    if isinstance(cap, Wrapped):
        return cap.label
    if isinstance(cap, Proxy):
        return f"{cap.compartment} (main object)"
    if isinstance(cap, Remote):
        return f"{cap.peer.name} object #{cap.import_id}"
    if isinstance(cap, Host):
        return cap.label or f"{cap.kind} of {cap.owner}"
    if isinstance(cap, Promised):
        return f"a capability promised by {cap.peer.name}'s call #{cap.answer_id}"
    return type(cap).__name__
