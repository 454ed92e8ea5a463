"""Attenuation: membranes, quotas, and the audit trail of calls (pure).

A *membrane* is the attenuation of one grant (an allow-list, revocability,
quotas), shared by everything obtained through that grant: the router wraps
every capability that crosses it: results of calls through it, capabilities
the holder passes the other way (through its *reverse*), and capabilities the
other side passes back in calls on those (through the membrane itself).
Revoking kills the grant, everything derived from it and the calls in flight
through any of them.

The router asks `Membrane.admit` before delivering each call through a
wrapped capability; a refusal is a `Denial`.  `AuditTrail` turns calls into
audit records (opened when a call is delivered, closed when it ends).
No I/O: time comes from the caller.
"""
from __future__ import annotations

from capnp_schemas.text import KEPT_REASON_LIMIT, bounded, listed

from .caps import Call, CallError, Denial, Wrapped, describe
from .supervision import TokenBucket


class Names:
    """Interface and method names, for messages and the audit (ids otherwise)."""

    def __init__(self, names: dict | None = None):
        self._names = names or {}       # interface id -> (name, {method id: name})

    def interface(self, interface_id: int) -> str:
        entry = self._names.get(interface_id)
        return entry[0] if entry else f"{interface_id:#x}"

    def method(self, interface_id: int, method_id: int) -> str:
        entry = self._names.get(interface_id)
        return str(entry[1].get(method_id, method_id)) if entry else str(method_id)

    def call(self, interface_id: int, method_id: int) -> str:
        return f"{self.interface(interface_id)}.{self.method(interface_id, method_id)}"


class Membrane:
    """The attenuation of one grant.

    `allow`: (interface id, method id) pairs that may be called on interfaces in
    `restricted` (the granted one, and any the allow-list names); calls on other
    interfaces pass.  Quotas (`uses_left`, `expires_at`, `rate`) count calls
    through the grant and everything obtained through it.
    """

    def __init__(self, label: str, allow=None, restricted=frozenset(), revocable=False,
                 forward: "Membrane | None" = None):
        self.label = label
        self.allow = allow
        self.restricted = restricted
        self.revocable = revocable
        self.forward = forward            # set on a reverse membrane (the params direction)
        # a host grant's (for_grant): what it wraps that the host serves was made by
        # the host for this grant, and is released when it is revoked
        # (Router._release_host_objects); a compartment grant's wraps what its other
        # side hands back, which is that side's own
        self.host_grant = False
        self._revoked: str | None = None
        self._allowed_text: str | None = None     # _allowed(), once made
        self.uses_left: int | None = None
        self.expires_at: float | None = None
        self.rate: TokenBucket | None = None
        self.wrappers: dict[int, Wrapped] = {}   # id(target) -> its wrapper here
        self.inflight: set = set()               # reply keys of calls through it
        # calls that spent its quotas and have not reached their callee yet (they wait
        # for a start, a promise): each keeps what it spent (kept) or gets it back
        # (refund), so until they are done a grant at max_uses is not used up for good
        self.held = 0
        # Every grant's membrane has a reverse: what the holder passes through the
        # grant (in params) is wrapped by it, so that calls back on it are known to
        # cross the grant, and what the other side hands the holder in *their*
        # params (an object passed to a callback) is wrapped by the grant itself,
        # as results are (Router._deliver): it is obtained through the grant too.
        self.reverse = Membrane(label + " (passed through)", forward=self) \
            if forward is None else None

    @classmethod
    def for_grant(cls, label: str, grant, interface_id: int, now: float) -> "Membrane":
        """The membrane of `grant` (a policy.Grant whose `methods` preflight resolved),
        granted on `interface_id`, created at time `now`."""
        restricted = frozenset({interface_id} | set(grant.mentioned or ())
                               | {i for i, _ in (grant.methods or ())})
        m = cls(label, grant.methods, restricted, grant.revocable)
        m.host_grant = grant.kind == "host"
        m.uses_left = grant.max_uses
        if grant.expires_after is not None:
            m.expires_at = now + grant.expires_after
        if grant.calls_per_second is not None:
            m.rate = TokenBucket(grant.calls_per_second, now)
        return m

    @property
    def revoked(self) -> str | None:
        return self.forward.revoked if self.forward is not None else self._revoked

    @property
    def expires(self) -> float | None:
        """When the grant expires (expires_after): a reverse membrane expires with its
        grant, as it is revoked with it.  Else the other side called back what the
        holder passed through the grant (an observer) for ever after the grant had
        expired, and natively: the fast lane took such calls back."""
        return self.forward.expires_at if self.forward is not None else self.expires_at

    def expired(self, now: float) -> bool:
        """Whether the grant has expired at `now` (expires_after): it lets no call
        through any more, whether new (admit) or one that waited since it was
        admitted (the router's resume and host-call checks)."""
        expires = self.expires
        return expires is not None and now >= expires

    def revoke(self) -> list:
        """Revoke it; returns the reply keys of the calls in flight through it."""
        if self._revoked is not None:
            return []
        self._revoked = "revoked"
        return list(self.inflight) + list(self.reverse.inflight if self.reverse else ())

    def allows(self, interface_id: int, method_id: int) -> bool:
        if self.allow is None or interface_id not in self.restricted:
            return True
        return (interface_id, method_id) in self.allow

    def admit(self, cap: Wrapped, call: Call, now: float, names: Names):
        """Raise Denial unless `call` may pass through `cap` (this membrane's wrapper);
        spends the quotas of a call that passes."""
        if self.revoked:
            raise Denial(f"{cap.label} was revoked", "failed")
        if not self.allows(call.interface_id, call.method_id):
            raise Denial(f"{cap.label}: {names.call(call.interface_id, call.method_id)} "
                         f"is not allowed (allow = [{self._allowed(names)}])", "failed")
        if self.expired(now):
            raise Denial(f"{cap.label} has expired (expires_after)", "failed")
        if self.uses_left is not None and self.uses_left <= 0:
            if self.held:
                # a use may come back (refund): E_DENIED would be a refusal for good
                raise Denial(f"{cap.label} is used up for now: {self.held} calls that "
                             f"spent its uses have not reached their callee yet, and "
                             f"give them back if they never do (max_uses); try again",
                             "overloaded")
            raise Denial(f"{cap.label} is used up (max_uses)", "failed")
        if self.rate is not None and not self.rate.take(now):
            raise Denial(f"{cap.label}: more than {self.rate.rate:g} calls per second "
                         f"(calls_per_second)", "overloaded")
        if self.uses_left is not None:
            self.uses_left -= 1
        if self.uses_left is not None or self.rate is not None:
            self.held += 1        # until the router says it reached its callee, or not

    def _allowed(self, names: Names) -> str:
        """The methods it allows, as a denial names them: made once (the list never
        changes; the reason cuts it).  Made anew for every call refused (each method
        named, sorted, joined), a long allow list cost the supervisor's one loop
        ~4 ms a denied call (10,000 methods), which a compartment could ask for as
        fast as it liked.  And only as much of it as a reason shows (`listed`): made
        whole, each denial still copied all of it into its reason before the cut (10 MB
        for 10,000 methods with names of 1,000 characters: ~0.8 ms a denial)."""
        if self._allowed_text is None:
            self._allowed_text = listed(sorted(names.call(i, j) for i, j in self.allow or ()))
        return self._allowed_text

    @property
    def counts(self) -> bool:
        """Whether a call through it spends a quota (max_uses, calls_per_second)."""
        return self.uses_left is not None or self.rate is not None

    def kept(self):
        """A call admit() let pass (and that spent its quotas) reached its callee:
        what it spent stays spent."""
        self.held -= 1

    def refund(self):
        """A call admit() let pass never reached its callee (refused further on, by
        another membrane or the router, or failed while it waited): what it spent
        comes back.  Only a call that reaches its callee spends a use."""
        self.held -= 1
        if self.uses_left is not None:
            self.uses_left += 1
        if self.rate is not None:
            self.rate.give_back()


class AuditTrail:
    """One record per capability call, emitted when the call ends (or is refused)."""

    def __init__(self, names: Names, enabled: bool):
        self.names = names
        self.enabled = enabled
        self._open: dict[tuple, tuple] = {}      # reply key -> (record, start)

    def open(self, key, cap, call: Call, now: float, wall: float):
        if self.enabled and key not in self._open:
            self._open[key] = ({"time": wall, "caller": call.reply[0].name,
                                "capability": describe(cap),
                                "interface": self.names.interface(call.interface_id),
                                "method": self.names.method(call.interface_id, call.method_id)},
                               now)

    def close(self, key, outcome: str, now: float, reason: str | None = None) -> dict | None:
        opened = self._open.pop(key, None)
        if opened is None:
            return None
        record, start = opened
        record.update(outcome=outcome, duration_ms=round((now - start) * 1000, 3))
        if reason:
            record["reason"] = bounded(reason, KEPT_REASON_LIMIT)
        return record

    def close_all(self, outcome: str, now: float, reason: str) -> list[dict]:
        """The records of every call still open, ended with `outcome` and `reason`, in
        the order the calls arrived."""
        return [self.close(key, outcome, now, reason) for key in list(self._open)]


__all__ = ["AuditTrail", "CallError", "Denial", "Membrane", "Names"]
