"""A few hundred inputs of the fast lane's differential fuzzer (fuzz/lane.py), and
proof that it finds the native path and the Python path disagreeing."""
import struct

import pytest

from capnp_schemas import rpcwire, wire
from supervisor import fastlane, router as R
from fuzz import lane as L

pytestmark = pytest.mark.skipif(fastlane.Lane is None, reason=str(fastlane.unavailable))


def test_a_few_hundred_mutated_calls_go_the_same_way_on_either_path():
    done, failures = L.run(300, seed=20261205)
    assert done == 300
    assert failures == {}, "\n".join(f"{k}: {v[0][1][:300]}" for k, v in failures.items())


def test_a_python_path_that_reads_a_call_otherwise_is_caught(monkeypatch):
    """The Python path (every one of app's messages, in one world; only those
    the lane does not take, in the other) reads question 100's method as 1."""
    real = R.Router.receive

    def otherwise(self, pid, data):
        peer = self.peers.get(pid)
        if peer is not None and peer.name == "app":
            try:
                out = b""
                for segs in wire.Framer().feed(bytes(data)):   # what the lane handed over
                    segs = [bytearray(sg) for sg in segs]
                    m = rpcwire.decode_pycapnp(segs)
                    if m.which == rpcwire.MSG_CALL and m.id == 100 and m.method_id == 0:
                        _k, s, start, w = wire.resolve(segs, (0, 0))          # Message
                        _k, s, start, _w = wire.resolve(segs,
                                                        (s, start + ((w >> 32) & 0xFFFF)))
                        segs[s][8 * start + 4] = 1                            # methodId
                    out += wire.frame([bytes(sg) for sg in segs])
                data = out
            except Exception:
                pass
        return real(self, pid, data)
    monkeypatch.setattr(R.Router, "receive", otherwise)
    _done, failures = L.run(100, seed=3)
    assert any(k.startswith(("calc got", "app got")) for k in failures), failures


def test_a_native_path_that_loses_audit_records_is_caught(monkeypatch):
    """In the world pairs with an audit (half of them), the records each world's
    audit emits after each input are compared: a lane whose drained records are
    lost (calls forwarded natively, unaudited) is caught."""
    def losing(self, bounded=False):
        self.native.drain_audit()
        return False
    monkeypatch.setattr(R.Router, "_drain_native_audit", losing)
    _done, failures = L.run(60, seed=5)
    assert any(k.startswith("audit") for k in failures), failures


def test_a_bad_return_for_a_call_whose_caller_is_gone_is_judged_once_the_supervisor_read_it(
        monkeypatch):
    """calc answers app's call with a Return whose content points outside its
    segment, after app was cut off (the same write reused the call's question id).
    Both paths cut calc off for it, once they have read it; the harness judges after
    its own read of calc's socket.  The lane hands the Return to Python a pump later
    than the Python path reads it, and the harness used to judge the native world
    before that: "calc cut off: native False, python True" (seed 251251, input 2053)."""
    def out_of_its_segment(_seed, data, _answer_id):
        segs = [bytearray(sg) for sg in wire.unframe(data)]
        s, at = rpcwire.decode_pycapnp(segs).content_loc
        segs[s][8 * at:8 * at + 8] = struct.pack("<II", 1000 << 2, 1 | (1 << 16))
        return wire.frame([bytes(sg) for sg in segs]), True
    monkeypatch.setattr(L, "bad_return", out_of_its_segment)
    gone = []
    for native in (True, False):
        w = L.World(native)
        try:
            call = L.seeds(w.imp)[0].segs            # method 0, tag 7: finish needed
            w.bad_return = "any"
            w.send(wire.frame(call) * 2, 1001)       # question 100 twice: app cut off
            assert w.gone
            assert w.bad_sent
            gone.append(w.calc_gone())
            said = [str(getattr(e, "text", "")) for e in w.sup.other]
            assert any("calc: protocol error" in t and "outside its segment" in t
                       for t in said), said
        finally:
            w.stop()
    assert gone == [True, True]
