"""Attenuated capabilities passed on through several hops keep their attenuation
(fuzz/attenuation_scenarios.py), and the scenarios find it when they would not."""
import pytest

from fuzz import attenuation_scenarios as AS
from supervisor import router as R
from supervisor.caps import Wrapped
from supervisor.membrane import Membrane


@pytest.mark.parametrize("revoke", [True, False])
def test_what_comes_through_an_attenuated_grant_stays_attenuated_however_it_is_passed_on(
        revoke):
    """p1's grant to calc (an allow-list, max_uses, revocable), what it brings
    (counters) passed among three compartments and two external clients in params
    and results, as promises and pipelined on, released, its holders restarted:
    no call reaches calc past the allow-list, the quota or the revocation, and once
    everyone is gone the router holds nothing of it."""
    assert AS.run(range(1, 41), leaks=True, revoke=revoke) == {}


def _finds(monkeypatch, obj, name, value) -> dict:
    monkeypatch.setattr(obj, name, value)
    return AS.run(range(1, 41))


def test_the_scenarios_find_results_handed_back_bare(monkeypatch):
    """A router that handed the results of calls through the grant back unwrapped
    (a counter as calc made it): its holders called Counter methods the allow-list
    refuses, past the quota and after the revocation."""
    real = R.Router._wrap

    def bare(self, cap, membrane, label):
        w = real(self, cap, membrane, label)
        through = membrane.label == "p1.calc" and membrane.forward is None
        return cap if through and type(cap) is not Wrapped and ">" in label else w
    fails = _finds(monkeypatch, R.Router, "_wrap", bare)
    assert fails and all("calc" in kind for kind in fails), fails


def test_the_scenarios_find_a_membrane_skipped_by_what_was_passed_on(monkeypatch):
    """A passed-on capability admitted by the membranes it crossed last only: the
    grant's own was not asked for calls of anyone but p1."""
    real = Membrane.admit

    def lax(self, cap, call, now, names):
        if self.label == "p1.calc" and call.reply[0].name != "p1":
            return None
        return real(self, cap, call, now, names)
    fails = _finds(monkeypatch, Membrane, "admit", lax)
    assert fails and all("calc" in kind for kind in fails), fails


def test_the_scenarios_find_calls_back_through_a_revoked_grants_reverse(monkeypatch):
    """A revocation that left the grant's reverse open: calc called back what p1
    and the others passed it through the grant after it was revoked."""
    monkeypatch.setattr(Membrane, "revoked", property(
        lambda self: None if self.forward is not None else self._revoked))
    fails = AS.run(range(1, 41))
    assert fails and all("call back reached" in kind for kind in fails), fails


def test_the_scenarios_find_a_grant_that_never_expires(monkeypatch):
    """A membrane whose expires_after was never checked: calls through what the
    grant brought went on reaching calc after it expired."""
    monkeypatch.setattr(Membrane, "expired", lambda self, now: False)
    fails = AS.run(range(1, 41))
    assert any("after the grant expired" in kind for kind in fails), fails
    assert all("expired" in kind or "call back reached" in kind for kind in fails), fails
