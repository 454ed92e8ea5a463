"""The fast lane: the native forwarding path between engines (issue 14).

`_fastlane.c` (built by `pip install -e .` with the system C compiler) runs
one thread that owns the engines' sockets: it frames what they send, and
forwards the plain calls and returns (supervisor/fastwire.h) along *routes*
the Python router installed, without waking the event loop.  Everything else
(host calls, first use of a capability, capabilities in payloads, errors,
anything it does not recognise) goes to Python, in order, and Python stays
the one authority: a route says only "calls from this caller's export X,
with interface I and a method in M, go to that callee's import Y", computed
by the router from the membranes the first call crossed, and the router
takes it down whenever anything about it changes (docs/design.md, "The fast
lane", has the invariants between the two sides).

`Lane` is None when the extension is not built; `unavailable` says why, and
the supervisor then says once at start that calls run slower.
`WSUPER_NATIVE=0` turns the lane off (benchmarks compare both).
"""
from __future__ import annotations

import functools
import importlib.util
import os

try:
    from ._fastlane import NATIVE_QID_BASE, Lane
    unavailable: str | None = None
except ImportError as e:      # no compiler when it was installed: the Python path only
    Lane = None
    NATIVE_QID_BASE = 1 << 31
    unavailable = f"the native forwarding path is not built ({e})"


def engines_native() -> str | None:
    """None if engines call into wasm natively (compartments/_fastcall.c); else why
    not.  Looked up, not imported: the supervisor never loads wasmtime itself."""
    if os.environ.get("WSUPER_NATIVE", "1") == "0":
        return None                     # enabled() says it
    if importlib.util.find_spec("compartments._fastcall") is None:
        return "the engines' native calls into wasm are not built (compartments._fastcall)"
    return None


def enabled() -> str | None:
    """None if the lane may be used; else why not (for the operator)."""
    if os.environ.get("WSUPER_NATIVE", "1") == "0":
        return "the native forwarding path is off (WSUPER_NATIVE=0)"
    return unavailable


class NativeSide:
    """What a protocol.Connection asks of the lane about its peer (duck-typed there,
    so capnp_schemas does not import the supervisor): which answer ids are open
    natively, Finish allowances for answers returned natively, how many of those
    are not finished, and native calls that Python must take over when their
    return comes to it."""
    __slots__ = ("lane", "pid", "router", "imports_limit", "ok", "conn_ok", "router_says",
                 "open", "close", "finish_ok", "in_flight", "unfinished", "returned",
                 "allow_finish")

    def __init__(self, lane, pid: int, router, imports_limit: int):
        self.lane = lane
        self.pid = pid
        self.router = router
        self.imports_limit = imports_limit
        self.ok = True
        self.conn_ok = True        # within the Connection's limits (limits_ok)
        self.router_says = True    # and the router's (router_ok)
        # Asked on every call Python handles: the lane's own methods, with the peer
        # bound (no Python frame in between).
        #: open(aid) -> False if answer `aid` is open already (on either side)
        self.open = functools.partial(lane.open_answer, pid)
        #: close(aid): Python's answer `aid` is done
        self.close = functools.partial(lane.close_answer, pid)
        #: finish_ok(aid): a Finish for an answer returned natively (allowed, ignored)
        self.finish_ok = functools.partial(lane.finish_ok, pid)
        #: in_flight() -> calls from the peer in flight natively
        self.in_flight = functools.partial(lane.in_flight, pid)
        #: unfinished() -> answers returned natively to the peer (an external client)
        #: that it has not finished: the Connection bounds them together with its own
        #: (max_unfinished)
        self.unfinished = functools.partial(lane.unfinished, pid)
        #: returned(aid) -> True if answer `aid`, which Python just returned without
        #: capabilities, is now on the lane's books as returned and not finished (as
        #: if returned natively): its Finish then needs no Python
        self.returned = functools.partial(lane.returned, pid)
        #: allow_finish(aid) -> True if answer `aid`, which Python just returned with
        #: noFinishNeeded, has its Finish allowance on the lane's books (one set of
        #: allowances for both paths, and one bound); False: the Connection keeps it
        self.allow_finish = functools.partial(lane.allow_finish, pid)

    def claim(self, qid: int):
        """A return for native question `qid` reached Python: take the call over."""
        rec = self.lane.claim(self.pid, qid)
        if rec is not None:
            self.router.adopt(rec)

    def claim_answer(self, aid: int):
        """Answer `aid` of this peer, open natively, becomes Python's: "returned" (it
        was returned and awaits the peer's Finish), "adopted" (a call in flight,
        now the router's), or None."""
        rec = self.lane.claim_answer(self.pid, aid)
        if rec is True:
            return "returned"
        if rec is not None:
            self.router.adopt(rec)
            return "adopted"
        return None

    def dropped(self, qid: int):
        if qid >= NATIVE_QID_BASE:
            self.lane.unreserve(self.pid, qid)

    def limits_ok(self, ok: bool):
        """The Connection's say: the peer is within the limits it enforces on new calls."""
        self.conn_ok = ok
        self._set(ok and self.router_says)

    def router_ok(self, ok: bool):
        """The router's say (a bound across peers, such as orphans_limit): False sends
        the peer's calls to Python, which judges them."""
        self.router_says = ok
        self._set(ok and self.conn_ok)

    def _set(self, ok: bool):
        if ok != self.ok:
            self.ok = ok
            self.lane.set_ok(self.pid, ok)
