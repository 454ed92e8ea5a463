"""Restart decisions, without processes."""
from supervisor.supervision import RestartPolicy, Supervision


def test_transient_restarts_only_abnormal_stops_with_growing_delays_then_gives_up():
    s = Supervision(RestartPolicy("transient", max_restarts=3, restart_window=10,
                                  restart_delay=0.5))
    assert s.decide(0, abnormal=False).action == "stop"
    decisions = [s.decide(t, abnormal=True) for t in (1, 2, 3)]
    assert [(d.action, d.delay, d.attempt) for d in decisions] == [
        ("restart", 0.5, 1), ("restart", 1.0, 2), ("restart", 2.0, 3)]
    failed = s.decide(4, abnormal=True)
    assert failed.action == "fail" and "3 restarts within 10 s" in failed.reason


def test_restarts_older_than_the_window_are_forgotten():
    s = Supervision(RestartPolicy("permanent", max_restarts=1, restart_window=5))
    assert s.decide(0, abnormal=False).action == "restart"     # permanent: even a clean stop
    assert s.decide(3, abnormal=True).action == "fail"
    s2 = Supervision(RestartPolicy("permanent", max_restarts=1, restart_window=5))
    s2.decide(0, abnormal=True)
    assert s2.decide(6, abnormal=True).action == "restart"


def test_never_means_never():
    s = Supervision(RestartPolicy("never"))
    assert s.decide(0, abnormal=True).action == "stop"


def test_denial_lines_are_throttled_per_caller_and_the_rest_counted():
    from supervisor.supervision import Throttle
    t = Throttle(per_second=2)
    assert [t.admit("bad", 0.1 * i) for i in range(5)] == \
        [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert t.admit("good", 0.3) == (True, 0)          # another caller is not held back
    assert t.admit("bad", 1.2) == (True, 3)           # a new window: three were hidden
    assert t.admit("bad", 1.3) == (True, 0)
