"""A few hundred random scenarios of the router's call lifecycle (fuzz/router_scenarios.py),
and proof that they find what they check for when it breaks."""
from fuzz import router_scenarios as RS
from supervisor import router as R


def test_a_few_hundred_scenarios_keep_every_invariant():
    assert RS.run(range(1, 401), steps=80) == {}


def test_the_scenarios_find_a_revoked_call_that_goes_on_waiting(monkeypatch):
    """As first built, a waiting call failed by a revocation stayed in its queue and
    went on when its callee came up."""
    monkeypatch.setattr(R.Router, "_stop_waiting", lambda self, key: None)
    fails = RS.run(range(1, 401), steps=80)
    assert any("after its caller was answered" in k or "carries tag" in k for k in fails), fails


def test_the_scenarios_find_a_leak_of_bytes_held_for_waiting_calls(monkeypatch):
    real = R.Router._unhold

    def leaky(self, peer, size):
        real(self, peer, size - 1 if size > 8 else size)
    monkeypatch.setattr(R.Router, "_unhold", leaky)
    fails = RS.run(range(1, 401), steps=80)
    assert any("pipelined_bytes" in k for k in fails), fails
