"""A few thousand inputs of the router and host-call fuzz targets (fuzz/router.py),
and proof that their checks fail when what they check breaks."""
from fuzz import router as FR
from supervisor import hostfs, router as R

COUNT = 4000


def test_a_few_thousand_hostile_messages_and_params_break_nothing():
    done, failures = FR.run(COUNT, seed=20261203)
    assert done == COUNT
    assert failures == {}, "\n".join(failures)


def test_a_fault_the_choke_point_catches_is_still_reported(monkeypatch):
    real = R.Router._on_call

    def faulty(self, peer, ev):
        if peer.name == "evil" and ev.method_id == 0:
            raise KeyError("a bug")
        return real(self, peer, ev)
    monkeypatch.setattr(R.Router, "_on_call", faulty)
    _done, failures = FR.run(400, seed=7)
    assert any(k.startswith("router: evil: internal error") for k in failures), failures


def test_a_host_layer_fault_is_reported(monkeypatch):
    def broken(self, path, *a, **kw):
        raise ZeroDivisionError
    monkeypatch.setattr(hostfs.Directory, "stat", broken)
    _done, failures = FR.run(3000, seed=8)
    assert any(k.startswith("host: Directory.stat") and "ZeroDivisionError" in k
               for k in failures), failures


def test_a_call_left_waiting_past_its_call_time_is_reported(monkeypatch):
    # the router's clock moves in the fuzzer, and expire() runs: a router that never
    # fails a call its callee holds past call_time is caught
    monkeypatch.setattr(R.Router, "expire", lambda self: [])
    _done, failures = FR.run(1000, seed=9)
    assert any("held past its call_time" in k for k in failures), failures
