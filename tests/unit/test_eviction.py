"""Which external connection makes room for a new one (runtime.idlest, pure), and
which peers a pool of what waits for them sheds (router.pool_shed, pure)."""
from compartments.limits import Limits
from supervisor import router as R
from supervisor.runtime import IDLE_EVICT, _QueuePool, idlest


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
    from supervisor.endpoint import never_busy, take_request

    def is_stop(line):
        return never_busy(take_request(line)[0])
    assert is_stop(b'{"op":"stop","system":"/x"}')
    assert not is_stop(b'{"op":"status","system":"/x"}')
    assert not is_stop(b'{"op":"stop"')                  # not JSON
    assert not is_stop(b"[" * 100 + b"]" * 100)          # nested too deeply
    assert not is_stop(b'{"op":["stop"]}')
    assert not is_stop(b'{"op":"stop","op":"status","system":"/x"}')    # a key twice
    assert not is_stop(b'{"op":"stop","system":"/x","then":"status"}')  # a key unknown


class _FakeLink:
    shed = None

    def __init__(self, queued, soft=10):
        self.queued, self.soft = queued, soft


def test_the_external_pool_sheds_the_connections_holding_the_most_not_the_writer():
    """An outside review (reviewer 206): a write past the pool of what waits for
    external clients cut off its writer always, so connections that filled the pool
    and stopped calling kept it, and a client with a few answers waiting was cut off.
    The ones holding the most beyond their own (soft) go first, as many as it takes;
    the writer only if it would hold the most."""
    q = _QueuePool(100)
    hog1, hog2, small, writer = _FakeLink(60), _FakeLink(55), _FakeLink(15), _FakeLink(0)
    for pid, link in enumerate((hog1, hog2, small, writer)):
        q.links[link] = pid
    # hogs hold 50 + 45 beyond their own, small 5: the writer's 20 beyond do not fit
    assert q.room(writer, 30)
    assert hog1.shed and hog2.shed is None and small.shed is None
    assert [pid for pid, _ in q.owed] == [0]
    assert "the most of any external client" in q.owed[0][1]
    # a shed link counts no more (it is being cut off): the writer may go on
    q.owed.clear()
    assert q.room(writer, 55) and not q.owed
    # the writer holding the most is refused, and nobody is shed for it
    assert not q.room(writer, 120) and not q.owed and hog2.shed is None
    # as many as it takes, the biggest first, each holding more than the writer
    q2 = _QueuePool(100)
    links = [_FakeLink(60), _FakeLink(55), _FakeLink(50), _FakeLink(0)]
    for pid, link in enumerate(links):
        q2.links[link] = pid
    assert q2.room(links[3], 40)            # 30 + 50 + 45 + 40 = 165: two go
    assert [pid for pid, _ in q2.owed] == [0, 1] and links[2].shed is None
    # never one holding less than the writer: the writer is refused then
    q3 = _QueuePool(100)
    a, b, w = _FakeLink(50), _FakeLink(50), _FakeLink(0)
    q3.links.update({a: 0, b: 1, w: 2})
    assert not q3.room(w, 60) and not q3.owed and a.shed is None


def test_a_pool_sheds_the_biggest_holders_first_and_never_one_holding_less_than_the_writer():
    """router.pool_shed, the decision alone: [] when it fits; else the keys of those
    holding the most, as many as it takes, each holding more than the writer would;
    None (the writer goes) when that is not enough."""
    assert R.pool_shed(0, [(500, "a")], 100) == []            # within its own bound
    assert R.pool_shed(20, [(50, "a"), (30, "b")], 100) == []
    assert R.pool_shed(40, [(50, "a"), (45, "b"), (5, "c"), (-3, "d")], 100) == ["a"]
    assert R.pool_shed(40, [(45, "b"), (60, "a"), (50, "c")], 100) == ["a", "c"]
    assert R.pool_shed(60, [(50, "a"), (50, "b")], 100) is None
    assert R.pool_shed(150, [], 100) is None                  # alone past it


def test_compartments_share_a_pool_twice_what_the_largest_of_them_holds_past_its_own():
    """router.engine_queue_pool: one engine may still reach its own hard bound, two
    together; at the default message_size 128 MiB, as external clients'."""
    small, large = Limits(message_size=64 << 10), Limits(message_size=32 << 20)
    assert R.engine_queue_pool([small]) == 2 * (20 << 20) - 2 * (1 << 20)
    assert R.engine_queue_pool([small, large]) == \
        2 * (R.queue_hard_limit(large) - R.queue_soft_limit(large))
    assert R.engine_queue_pool([Limits()]) == R.engine_queue_pool([]) == 128 << 20


def test_a_writer_refused_by_its_pool_counts_no_more_and_is_not_shed_again():
    """A write refused because its peer would hold the most of the pool cuts that
    peer off; still counted meanwhile, the next write to another shed it too, and
    it was cut off twice, the second time named `peer 9`, with the other reason."""
    q = _QueuePool(100, "compartment", "compartments")
    a, w = _FakeLink(40), _FakeLink(80)
    q.links.update({a: 0, w: 1})
    assert not q.room(w, 90) and w.shed and "compartments together" in w.shed
    assert q.room(a, 50) and not q.owed        # w is no longer counted, nor shed


class _CountingLink(_FakeLink):
    reads = 0

    @property
    def queued(self):
        _CountingLink.reads += 1
        return self._queued

    @queued.setter
    def queued(self, value):
        self._queued = value


def test_writes_past_a_soft_bound_measure_every_peer_only_when_the_pool_may_be_full():
    """Every write past a peer's soft bound measured every peer of the pool: with
    1000 compartments each answer to an engine that floods calls cost the loop
    0.42 ms.  Only the writes the pool lets through add past a soft bound, so what
    they add is an upper bound of what the pool holds: the peers are measured again
    only when that bound would pass the pool's size, and then it is exact again."""
    q = _QueuePool(1000, "compartment", "compartments")
    links = [_CountingLink(0) for _ in range(1000)]
    for pid, link in enumerate(links):
        q.links[link] = pid
    writer = links[0]
    _CountingLink.reads = 0
    for _ in range(90):                        # 90 x 10 bytes past its own 10
        assert q.room(writer, writer.queued + 10, 10)
        writer.queued += 10
    assert _CountingLink.reads <= 2 * 90 + 1000, _CountingLink.reads   # not 90 x 1000
    # past the bound: measured, and still the pool's size that decides
    other = links[1]
    other.queued = 10 + 500
    assert q.room(other, 10 + 500 + 200, 200)          # 900 + 700 > 1000: the writer
    assert writer.shed and [pid for pid, _ in q.owed] == [0]    # holding 900 goes
    q.owed.clear()
    other.queued += 200
    # what was shed counts no more; what the others hold is the bound again
    assert q.upper == 700
    assert not q.room(other, 700 + 10 + 400, 400)      # alone past the pool: refused


def test_calls_callers_sent_a_busy_engine_are_not_its_share_of_the_engines_pool():
    """What waits for an engine past its soft bound because its callers called it (up
    to router.calls_past_soft, where the router admits calls) is theirs, not the
    engine's share of the pool: counted as its own, a few callers filling that room
    in eight compartments busy in a long call had an honest one cut off (r261,
    test_honest_compartments_busy_in_a_call_are_not_cut_off_for_what_callers_queued).
    Past that room, and what it did not get from callers (answers to its own calls
    it left unread: the r258 flood), is the pool's as before."""
    calls = {0: 40, 1: 40, 2: 0, 3: 500}                # bytes of calls forwarded to each
    q = _QueuePool(100, "compartment", "compartments", excused=calls.get)
    busy1, busy2, flooder, huge = (_FakeLink(50), _FakeLink(50), _FakeLink(0),
                                   _FakeLink(0))
    for pid, link in enumerate((busy1, busy2, flooder, huge)):
        link.calls_room = 45
        q.links[link] = pid
    # the busy ones hold 40 beyond their soft bound, all calls to them: nothing pooled
    assert q.room(flooder, 110) and not q.owed          # the flooder's 100 fit
    flooder.queued = 110
    assert q.room(busy1, 50) and not q.owed and busy1.shed is None   # 40, all calls
    # past what its callers sent it, it holds some of its own: then the pool's
    assert q.room(busy1, 60) and [pid for pid, _ in q.owed] == [2]   # 10: the flooder goes
    q.owed.clear()
    flooder.shed = None
    # its own unread past the pool: the flooder is refused, not a busy one shed for it
    assert not q.room(flooder, 130) and not q.owed and flooder.shed
    assert busy1.shed is None and busy2.shed is None
    # calls to it count at most calls_room: past it, the rest is its own
    assert not q.room(huge, 10 + 45 + 101) and huge.shed
