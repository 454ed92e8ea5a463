"""A few hundred random scenarios of the router's call lifecycle (fuzz/router_scenarios.py),
and proof that they find what they check for when it breaks."""
from fuzz import router_scenarios as RS
from capnp_schemas import protocol as P
from supervisor import router as R


def test_a_few_hundred_scenarios_keep_every_invariant():
    assert RS.run(range(1, 401), steps=80) == {}


def test_the_scenarios_find_a_revoked_call_that_goes_on_waiting(monkeypatch):
    """As first built, a waiting call failed by a revocation stayed in its queue and
    went on when its callee came up."""
    monkeypatch.setattr(R.Router, "_stop_waiting", lambda self, key: None)
    # seeds 10, 36, 46 and 94 find it (11 of the first 400 did): 100, a quarter of
    # the time, with four to spare
    fails = RS.run(range(1, 101), steps=80)
    assert any("after its caller was answered" in k or "carries tag" in k for k in fails), fails


def test_the_scenarios_find_a_leak_of_bytes_held_for_waiting_calls(monkeypatch):
    real = R.Router._unhold

    def leaky(self, peer, size):
        real(self, peer, size - 1 if size > 8 else size)
    monkeypatch.setattr(R.Router, "_unhold", leaky)
    fails = RS.run(range(1, 51), steps=80)      # 383 of the first 400 seeds find it
    assert any("pipelined_bytes" in k for k in fails), fails


def _fails_with(monkeypatch, obj, name, value, seeds=200):
    """The failures of `seeds` scenarios with obj.name broken as `value` (the kinds are
    the first 50 characters of what broke)."""
    monkeypatch.setattr(obj, name, value)
    return RS.run(range(1, seeds + 1), steps=80)


def test_the_scenarios_find_an_orphan_count_a_tail_call_left_behind(monkeypatch):
    """As first built, a Return takeFromOtherQuestion for a cancelled call did not
    end its orphan count (7e17d3d)."""
    fails = _fails_with(monkeypatch, R.Router, "_answered_late", lambda self, peer, q: None)
    assert any("orphan" in k for k in fails), fails


def test_the_scenarios_find_a_tail_calls_outcome_held_past_its_finish(monkeypatch):
    real = R.Router._event

    def forgets(self, peer, ev):
        if isinstance(ev, P.FinishReceived):
            tails, self._tails = self._tails, {}
            try:
                return real(self, peer, ev)
            finally:
                self._tails = tails
        return real(self, peer, ev)
    fails = _fails_with(monkeypatch, R.Router, "_event", forgets)
    assert any("not open" in k for k in fails), fails


def test_the_scenarios_find_kept_bytes_not_counted(monkeypatch):
    real = P.Connection.send_elsewhere
    fails = _fails_with(monkeypatch, P.Connection, "send_elsewhere",
                        lambda self, aid, kept=0: real(self, aid, 0))
    assert any("its outcome holds" in k for k in fails), fails


def test_the_scenarios_find_an_outcome_handed_twice_or_to_the_wrong_question(monkeypatch):
    real = R.Router._hand_outcome

    def twice(self, handler, peer, qid, outcome):
        real(self, handler, peer, qid, outcome)
        if handler is not None:
            real(self, handler, peer, qid, outcome)
    # seeds 3, 7, 11, 15 and 24 find it, and more of the first 200 (50: a quarter)
    fails = _fails_with(monkeypatch, R.Router, "_hand_outcome", twice, 50)
    assert any("came twice" in k for k in fails), fails
    monkeypatch.undo()
    take = R.Router._take_waiting
    fails = _fails_with(monkeypatch, R.Router, "_take_waiting",
                        lambda self, peer, qid, handler=None: take(self, peer, qid), 400)
    assert any("carries tag" in k for k in fails), fails


def test_the_scenarios_find_a_taken_tail_call_cancelled_by_its_finish(monkeypatch):
    def gave_up(self, aid):
        a = self.answers.get(aid)
        return a is not None and a.finished and not a.returned
    fails = _fails_with(monkeypatch, P.Connection, "gave_up", gave_up)
    assert any("failed as cancelled" in k for k in fails), fails


def test_the_scenarios_find_a_release_that_leaves_an_entry_counted_midway(monkeypatch):
    """Peers let go of what they were passed, or what answers brought them, midway
    (not only as a scenario winds down): the step of the release breaks the
    invariant when its entry stays counted to its caller (Router._check_handles)."""
    fails = _fails_with(monkeypatch, R.Router, "_unpassed",
                        staticmethod(lambda peer, obj: None))
    ops = ("op release_got:", "op store_release:", "op calc_release:")
    assert any(op in x for v in fails.values() for x in v for op in ops), fails
