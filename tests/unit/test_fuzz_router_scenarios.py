"""A few hundred random scenarios of the router's call lifecycle (fuzz/router_scenarios.py),
and proof that they find what they check for when it breaks."""
from fuzz import router_scenarios as RS
from capnp_schemas import protocol as P
from supervisor import router as R


def test_a_few_hundred_scenarios_keep_every_invariant():
    assert RS.run(range(1, 401), steps=80) == {}


def _finds(found, seeds: int) -> dict:
    """The failures of scenarios 1 to `seeds` (80 steps), run 10 at a time, in order,
    up to the first run after which `found(failures)` holds: the same scenarios as
    one run of all, stopped once what the test asserts was found (an assertion that
    one of the first `seeds` finds it holds or fails as it did; the rest was CPU)."""
    fails: dict = {}
    for first in range(1, seeds + 1, 10):
        for kind, reports in RS.run(range(first, min(first + 10, seeds + 1)), steps=80).items():
            fails.setdefault(kind, []).extend(reports)
        if found(fails):
            break
    return fails


def test_the_scenarios_find_a_revoked_call_that_goes_on_waiting(monkeypatch):
    """As first built, a waiting call failed by a revocation stayed in its queue and
    went on when its callee came up."""
    monkeypatch.setattr(R.Router, "_stop_waiting", lambda self, key: None)
    # seeds 10, 36, 46 and 94 find it (11 of the first 400 did): 100, a quarter of
    # the time, with four to spare
    found = lambda fails: any("after its caller was answered" in k or "carries tag" in k  # noqa: E731
                              for k in fails)
    fails = _finds(found, 100)
    assert found(fails), fails


def test_the_scenarios_find_a_leak_of_bytes_held_for_waiting_calls(monkeypatch):
    real = R.Router._unhold

    def leaky(self, peer, size):
        real(self, peer, size - 1 if size > 8 else size)
    monkeypatch.setattr(R.Router, "_unhold", leaky)
    fails = _finds(lambda fails: any("pipelined_bytes" in k for k in fails),
                   50)                          # 383 of the first 400 seeds find it
    assert any("pipelined_bytes" in k for k in fails), fails


def _fails_with(monkeypatch, obj, name, value, found, seeds=200):
    """The failures of `seeds` scenarios with obj.name broken as `value` (the kinds are
    the first 50 characters of what broke), up to the first that `found` (_finds)."""
    monkeypatch.setattr(obj, name, value)
    return _finds(found, seeds)


def test_the_scenarios_find_an_orphan_count_a_tail_call_left_behind(monkeypatch):
    """As first built, a Return takeFromOtherQuestion for a cancelled call did not
    end its orphan count (7e17d3d)."""
    found = lambda fails: any("orphan" in k for k in fails)      # noqa: E731
    fails = _fails_with(monkeypatch, R.Router, "_answered_late", lambda self, peer, q: None,
                        found)
    assert found(fails), fails


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
    found = lambda fails: any("not open" in k for k in fails)    # noqa: E731
    fails = _fails_with(monkeypatch, R.Router, "_event", forgets, found)
    assert found(fails), fails


def test_the_scenarios_find_kept_bytes_not_counted(monkeypatch):
    real = P.Connection.send_elsewhere
    found = lambda fails: any("its outcome holds" in k for k in fails)   # noqa: E731
    fails = _fails_with(monkeypatch, P.Connection, "send_elsewhere",
                        lambda self, aid, kept=0: real(self, aid, 0), found)
    assert found(fails), fails


def test_the_scenarios_find_an_outcome_handed_twice_or_to_the_wrong_question(monkeypatch):
    real = R.Router._hand_outcome

    def twice(self, handler, peer, qid, outcome):
        real(self, handler, peer, qid, outcome)
        if handler is not None:
            real(self, handler, peer, qid, outcome)
    # seeds 3, 7, 11, 15 and 24 find it, and more of the first 200 (50: a quarter)
    twice_found = lambda fails: any("came twice" in k for k in fails)    # noqa: E731
    fails = _fails_with(monkeypatch, R.Router, "_hand_outcome", twice, twice_found, 50)
    assert twice_found(fails), fails
    monkeypatch.undo()
    take = R.Router._take_waiting
    found = lambda fails: any("carries tag" in k for k in fails)     # noqa: E731
    fails = _fails_with(monkeypatch, R.Router, "_take_waiting",
                        lambda self, peer, qid, handler=None: take(self, peer, qid), found, 400)
    assert found(fails), fails


def test_the_scenarios_find_a_taken_tail_call_cancelled_by_its_finish(monkeypatch):
    def gave_up(self, aid):
        a = self.answers.get(aid)
        return a is not None and a.finished and not a.returned
    found = lambda fails: any("failed as cancelled" in k for k in fails)     # noqa: E731
    fails = _fails_with(monkeypatch, P.Connection, "gave_up", gave_up, found)
    assert found(fails), fails


def test_the_scenarios_find_a_release_that_leaves_an_entry_counted_midway(monkeypatch):
    """Peers let go of what they were passed, or what answers brought them, midway
    (not only as a scenario winds down): the step of the release breaks the
    invariant when its entry stays counted to its caller (Router._check_handles)."""
    ops = ("op release_got:", "op store_release:", "op calc_release:")
    found = lambda fails: any(op in x for v in fails.values() for x in v  # noqa: E731
                              for op in ops)
    fails = _fails_with(monkeypatch, R.Router, "_unpassed",
                        staticmethod(lambda peer, obj: None), found)
    assert found(fails), fails
