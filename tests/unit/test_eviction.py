"""Which external connection makes room for a new one (runtime.idlest, pure)."""
from supervisor.runtime import IDLE_EVICT, idlest


def test_the_connection_idle_longest_and_not_busy_makes_room():
    conns = [(1, 5.0, True),           # idle longest, but a call of its own is in flight
             (2, 3.0, False),
             (3, 4.0, False),          # the one
             (4, 0.2, False)]
    assert idlest(conns, IDLE_EVICT) == (3, 4.0)


def test_no_connection_makes_room_while_each_did_useful_work_within_the_bound_or_is_busy():
    assert idlest([(1, 0.9, False), (2, 30.0, True)], IDLE_EVICT) is None
    assert idlest([], IDLE_EVICT) is None
    assert idlest([(1, IDLE_EVICT, False)], IDLE_EVICT) == (1, IDLE_EVICT)


def test_an_admin_connection_makes_room_by_closing_the_oldest_still_sending_its_request():
    from supervisor.endpoint import admin_evictee
    conns = [("a", 1.0, False), ("b", 2.0, True), ("c", 0.5, False), ("d", 3.0, True)]
    assert admin_evictee(conns) == "b"           # "a" and "c" are being answered
    assert admin_evictee([("a", 1.0, False), ("c", 0.5, False)]) is None   # refuse the new
    assert admin_evictee([]) is None


def test_only_a_stop_request_is_one_the_admin_socket_never_refuses_for_being_too_many():
    from supervisor.endpoint import is_stop
    assert is_stop(b'{"op":"stop","system":"/x"}')
    assert not is_stop(b'{"op":"status","system":"/x"}')
    assert not is_stop(b'{"op":"stop"')                  # not JSON
    assert not is_stop(b"[" * 100 + b"]" * 100)          # nested too deeply
    assert not is_stop(b'{"op":["stop"]}')
