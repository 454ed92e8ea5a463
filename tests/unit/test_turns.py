"""turns.Turns, and the supervisor's lane host worker built on it (runtime.py): the
supervisor's state is touched by one thread at a time, what the worker owes runs
in trio's thread, in order, before any task, and neither thread starves the other."""
import socket
import threading
import time

import pytest
import trio

from supervisor import effects as fx, runtime
from supervisor.turns import Turns


def _worker(turns, body, rounds, done):
    """A thread that takes `rounds` turns, running `body()` in each."""
    def run():
        try:
            for _ in range(rounds):
                if not turns.enter():
                    return
                try:
                    body()
                finally:
                    turns.leave()
        finally:
            done.append(True)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_trio_tasks_never_run_while_the_worker_has_its_turn():
    state = {"owner": None, "clashes": 0, "worker": 0, "trio": 0}

    def body():
        if state["owner"] is not None:
            state["clashes"] += 1
        state["owner"] = "worker"
        t = time.perf_counter() + 0.0002
        while time.perf_counter() < t:    # long enough for trio's thread to get the GIL
            time.sleep(0)
        state["worker"] += 1
        state["owner"] = None

    async def main():
        turns = Turns()
        turns.install()
        done = []
        _worker(turns, body, 300, done)
        with trio.fail_after(20):
            while not done:
                if state["owner"] is not None:
                    state["clashes"] += 1
                state["trio"] += 1
                await trio.sleep(0 if state["trio"] % 2 else 0.0001)
        turns.close()
    trio.run(main)
    assert state["worker"] == 300 and state["trio"] > 10
    assert state["clashes"] == 0


def test_what_the_worker_owes_runs_in_trios_thread_in_order_before_any_task():
    seen = []

    async def main():
        turns = Turns()
        turns.install()
        trio_thread = threading.get_ident()

        async def spy():
            while True:
                seen.append("task")
                await trio.sleep(0.0005)

        def body():
            seen.append("worker")
            for i in range(3):
                turns.owe(lambda i=i: seen.append(
                    ("owed", i, threading.get_ident() == trio_thread)), stop=i == 1)
            assert turns.stopped

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spy)
            await trio.sleep(0.01)
            done = []
            _worker(turns, body, 2, done)
            with trio.fail_after(10):
                while not done:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        turns.close()
    trio.run(main)
    first = seen.index("worker")
    # each turn's debts are paid by trio's thread, in order, before a task runs again,
    # and the second turn waited for them (never two turns with debts in between)
    assert seen[first:first + 4] == ["worker", ("owed", 0, True), ("owed", 1, True),
                                     ("owed", 2, True)]
    second = seen.index("worker", first + 1)
    assert seen[second + 1:second + 4] == [("owed", 0, True), ("owed", 1, True),
                                          ("owed", 2, True)]


def test_a_busy_worker_does_not_starve_trio_nor_trio_the_worker():
    counts = {"worker": 0, "trio": 0}

    def body():
        counts["worker"] += 1

    async def main():
        turns = Turns()
        turns.install()
        done = []
        t = _worker(turns, body, 10 ** 9, done)     # until closed
        with trio.fail_after(30):
            while counts["trio"] < 2000:      # trio keeps running tasks meanwhile
                counts["trio"] += 1
                await trio.sleep(0)
        at = counts["worker"]
        with trio.fail_after(30):
            while counts["worker"] < at + 100:   # ... and so does the worker
                await trio.sleep(0)
        turns.close()
        await trio.to_thread.run_sync(t.join)
        assert done
    trio.run(main)
    assert counts["trio"] >= 2000


def test_after_close_or_a_failed_debt_the_worker_gets_no_more_turns():
    async def main():
        turns = Turns()
        turns.install()
        assert turns.enter.__self__ is turns
        outcome = []

        def boom():
            raise ValueError("a bug")

        def first():
            turns.owe(boom)
        done = []
        t = _worker(turns, first, 1, done)
        with trio.fail_after(10):
            await turns.failed.wait()
        assert isinstance(turns.error, ValueError)
        await trio.to_thread.run_sync(t.join)
        t2 = threading.Thread(target=lambda: outcome.append(turns.enter()))
        t2.start()
        await trio.to_thread.run_sync(t2.join)
        turns.close()
        turns.close()                    # twice is harmless
        return outcome
    assert trio.run(main) == [False]



def test_an_error_in_trios_hook_fails_the_supervisor_and_never_strands_the_worker():
    """Nothing raises out of an Instrument hook: trio would drop the instrument with
    the lock held, and the worker would wait for it for ever."""
    async def main():
        turns = Turns()
        turns.install()
        turns.on_stuck = lambda: None

        def waiting():
            raise RuntimeError("a bug in the lane's check")
        turns.waiting = waiting
        with trio.fail_after(10):
            while not turns.failed.is_set():
                await trio.sleep(0)     # a busy round: the hook asks `waiting`
        assert isinstance(turns.error, RuntimeError)
        outcome = []
        t = threading.Thread(target=lambda: outcome.append(turns.enter()), daemon=True)
        t.start()
        await trio.to_thread.run_sync(t.join, 10)
        assert not t.is_alive(), "the worker waits for a lock nobody will let go"
        turns.close()
        return outcome
    assert trio.run(main) == [False]

# ---------------------------------------------------------------- the supervisor's worker

class _Lane:
    """A lane with one peer (1) whose items are scripted; writes are recorded."""

    def __init__(self):
        self._r, self._w = socket.socketpair()
        self.event_fd = self._r.fileno()
        self.items: list = []
        self.written: list = []
        self.released = 0

    def put(self, *items):
        self.items.extend(items)
        self._w.send(b"!")

    def _reset(self):
        try:
            self._r.recv(64, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass

    def ready(self):
        self._reset()
        return [1] if self.items else []

    def any_ready(self):
        return bool(self.items)

    def take(self, pid):
        items, self.items = self.items, []
        return items

    def release(self, pid):
        self.released += 1

    def write(self, pid, data):
        self.written.append((threading.current_thread().name, data))
        return True


class _Router:
    """Each item names its effects (a script); `peers` holds the one peer."""
    peers = {1: None, 2: None}

    def __init__(self, script):
        self.script = script

    def receive(self, pid, chunk):
        return list(self.script[chunk])


def _supervisor(lane, script):
    sup = runtime.Supervisor.__new__(runtime.Supervisor)
    sup.lane, sup.audit, sup.router = lane, None, _Router(script)
    links = {}
    for pid in (1, 2):
        link = runtime._NativeLink.__new__(runtime._NativeLink)
        link.lane, link.pid, link.closed = lane, pid, False
        link.busy, link.end, link.wake, link.pending = False, runtime._OPEN, trio.Event(), []
        links[pid] = link
    sup.links = links
    sup._peer_of = {}
    sup.started = []
    sup._on_started = lambda e: sup.started.append(
        (threading.current_thread().name, [d for _, d in lane.written]))
    return sup


def test_the_worker_keeps_the_order_of_effects_it_hands_to_trio():
    """Sends before a lifecycle effect go out from the worker; the effect and every
    send after it are performed in trio's thread, in the order the router gave."""
    lane = _Lane()
    script = {b"a": [fx.Send(1, b"1")],
              b"b": [fx.Send(1, b"2"), fx.Started("x", False, 7), fx.Send(2, b"3")],
              b"c": [fx.Send(1, b"4")]}
    sup = _supervisor(lane, script)
    sup._peer_of = {"x": 7}

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            nursery.start_soon(sup._lane_host)
            nursery.start_soon(sup._pump_native, 1, sup.links[1])
            await trio.sleep(0.01)
            lane.put(b"a", b"b", b"c")
            with trio.fail_after(10):
                while len(lane.written) < 4:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert [d for _, d in lane.written] == [b"1", b"2", b"3", b"4"]
    assert lane.written[0][0] == "wsuper-lane-host"
    trio_thread = threading.main_thread().name
    # the Started effect: in trio's thread, after the sends before it, before those after
    assert sup.started == [(trio_thread, [b"1", b"2"])]
    assert all(name == trio_thread for name, _ in lane.written[2:])
    # the rest of the batch went to the peer's own task, in trio; then it let go
    assert sup.links[1].pending == [] and not sup.links[1].busy and lane.released == 1


def _faults_from(sup, lane, item) -> list:
    """Run the host worker, give it `item` from peer 1, and return the faults the
    supervisor saw (thread, peer, exception); the worker must go on after them."""
    faults = []
    sup._fault = lambda pid, e: faults.append((threading.current_thread().name, pid,
                                               type(e).__name__))

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            nursery.start_soon(sup._lane_host)
            await trio.sleep(0.01)
            lane.put(item)
            with trio.fail_after(10):
                while not faults:
                    await trio.sleep(0.001)
            await trio.sleep(0.05)
            assert not sup._turns.closed        # the worker goes on; trio.run ends well
            nursery.cancel_scope.cancel()
    trio.run(main)
    return faults


def test_a_fault_in_the_worker_cuts_off_that_peer_only():
    lane = _Lane()
    sup = _supervisor(lane, {b"ok": [fx.Send(1, b"fine")]})
    sup.router.receive = lambda pid, chunk: 1 / 0 if chunk == b"bad" else [fx.Send(pid, chunk)]
    faults = _faults_from(sup, lane, b"bad")
    assert faults == [(threading.main_thread().name, 1, "ZeroDivisionError")]
    assert sup.links[1].end == "cut off after an internal error"


def test_what_the_worker_owes_that_fails_cuts_off_that_peer_only():
    """An effect the worker hands to trio's thread (here Started) raises there: that
    peer is cut off, as when the lane task ran it, and the supervisor goes on."""
    lane = _Lane()
    sup = _supervisor(lane, {b"s": [fx.Started("x", False, 7), fx.Send(1, b"after")]})
    sup._peer_of = {"x": 7}

    def broken(e):
        raise KeyError("a bug in a lifecycle handler")
    sup._on_started = broken
    faults = _faults_from(sup, lane, b"s")
    assert faults == [(threading.main_thread().name, 1, "KeyError")]
    assert sup.links[1].end == "cut off after an internal error"
    assert b"after" not in [d for _, d in lane.written]   # the rest of that input: dropped


class _FloodLane(_Lane):
    """Peer 1 floods (50 items at every take, for as long as `flood`); peer 2's
    items are put by the test."""

    def __init__(self):
        super().__init__()
        self.flood = True
        self.theirs: list = []
        self.floods = 0                       # batches peer 1 was given

    def put2(self, item):
        self.theirs.append(item)
        self._w.send(b"!")

    def ready(self):
        self._reset()
        return [1] * self.flood + [2] * bool(self.theirs)

    def any_ready(self):
        return bool(self.theirs)

    def take(self, pid):
        if pid == 1:
            self.floods += self.flood
            return [b"f"] * 50 if self.flood else []
        items, self.theirs = self.theirs, []
        return items


def test_a_flood_on_one_peers_task_does_not_hold_up_another_peers_call():
    """Peer 1 floods: its own task works in trio a TURN at a time, so trio never waits
    for I/O, and the worker may not get the GIL for long.  Peer 2's call is still
    answered within a few of peer 1's batches (trio's thread takes over work that
    waited through two of its busy rounds; before, it waited hundreds of them)."""
    lane, waited = _FloodLane(), []

    def receive(pid, chunk):
        end = time.perf_counter() + 0.0001         # some router work per message
        while time.perf_counter() < end:
            pass
        return [fx.Send(pid, chunk)] if pid == 2 else []
    sup = _supervisor(lane, {})
    sup.router.receive = receive
    sup.router.native_tick = lambda room: []

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            nursery.start_soon(sup._lane_host)
            for pid in (1, 2):
                nursery.start_soon(sup._pump_native, pid, sup.links[pid])
            lane._w.send(b"!")                      # the flood starts
            await trio.sleep(0.3)
            floods = lane.floods
            lane.put2(b"call")
            with trio.fail_after(60):
                while b"call" not in [d for _, d in lane.written]:
                    await trio.sleep(0.001)
            waited.append(lane.floods - floods)
            lane.flood = False
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert waited[0] <= 20, waited


def test_a_peer_woken_before_its_task_first_waits_is_not_forgotten():
    """trio's thread takes the worker's peers over (`on_stuck` -> _take_in_trio) by
    waking each peer's task; a new engine's task may not have run yet then.  Its
    first wait must see that wake-up: before, it made a new event and waited on
    that, the items stayed in the lane, and the engine never became ready (a
    `wsuper up` under load: "did not start within 30 s")."""
    lane = _Lane()
    sup = _supervisor(lane, {b"a": [fx.Send(1, b"1")]})
    lane.items.append(b"a")                      # queued by the lane, never handed over

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            sup._take_in_trio(lane.ready())      # before the peer's task has run
            nursery.start_soon(sup._pump_native, 1, sup.links[1])
            with trio.fail_after(10):
                while not lane.written:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert [d for _, d in lane.written] == [b"1"]
    assert lane.released == 1 and not sup.links[1].busy


class _ClientsFloodLane(_Lane):
    """Peers 3.. are external clients, each flooding (50 items at every take, for as
    long as `flood`); peer 2's items are put by the test."""

    def __init__(self, clients):
        super().__init__()
        self.clients = clients
        self.flood = True
        self.theirs: list = []

    def put2(self, item):
        self.theirs.append(item)
        self._w.send(b"!")

    def ready(self):
        self._reset()
        return list(self.clients) * self.flood + [2] * bool(self.theirs)

    def any_ready(self):
        return bool(self.theirs)

    def take(self, pid):
        if pid in self.clients:
            return [b"f"] * 50 if self.flood else []
        items, self.theirs = self.theirs, []
        return items


def test_many_external_connections_flooding_share_one_turn_and_hold_up_no_compartment():
    """A local client opens 16 connections, each flooding the supervisor with work
    for Python (Gateway.get, say).  Each peer's task let the loop go every TURN, so
    the client had 16 turns to a compartment's one: the compartment's host call
    waited behind a turn of every connection (measured with real engines: 0.2 ms
    a call became 38 ms).  External clients now share one turn: the compartment's
    call is answered after the turns of a few clients, not of every one."""
    clients = list(range(3, 19))
    lane = _ClientsFloodLane(clients)
    log: list = []                                  # whose input, in order

    def receive(pid, chunk):
        end = time.perf_counter() + 0.0001          # some router work per message
        while time.perf_counter() < end:
            pass
        log.append(pid)
        return [fx.Send(pid, chunk)] if pid == 2 else []
    sup = _supervisor(lane, {})
    sup.router.receive = receive
    sup.router.native_tick = lambda room: []
    sup.router.peers = dict.fromkeys([1, 2, *clients])
    for pid in clients:
        link = runtime._NativeLink.__new__(runtime._NativeLink)
        link.lane, link.pid, link.closed = lane, pid, False; link.external = True
        link.busy, link.end, link.wake, link.pending = False, runtime._OPEN, trio.Event(), []
        sup.links[pid] = link
    turns_before: list = []

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            nursery.start_soon(sup._lane_host)
            for pid in [2, *clients]:
                nursery.start_soon(sup._pump_native, pid, sup.links[pid])
            lane._w.send(b"!")                      # the flood starts
            await trio.sleep(0.3)
            start = len(log)
            lane.put2(b"call")
            with trio.fail_after(60):
                while b"call" not in [d for _, d in lane.written]:
                    await trio.sleep(0.001)
            # the clients' turns (runs of one client's input) before the call's
            during = log[start:log.index(2, start)]
            turns_before.append(sum(1 for i, p in enumerate(during)
                                    if i == 0 or p != during[i - 1]))
            lane.flood = False
            nursery.cancel_scope.cancel()
    trio.run(main)
    # before: a turn of every connection, at least (16 and more)
    assert turns_before[0] <= 6, turns_before


class _Room:
    """The audit's room (runtime._Audit.room): an Event, replaced when it fills."""

    def __init__(self):
        self.room = trio.Event()
        self.room.set()


def test_clients_waiting_for_the_turn_feed_nothing_while_the_audit_is_full():
    """An external client checks the audit's room, then waits for the clients' turn.
    Meanwhile the audit's backlog fills (AUDIT_BACKLOG records wait): each client
    whose turn then came fed a whole TURN of input anyway, one after the other, so
    the backlog passed its mark by a TURN of records per connection waiting
    (max_connections of them), where it passed it by one TURN before the clients
    shared a turn.  The turn is taken only with the audit's room: a client whose
    turn comes while it is full lets it go and waits for room first."""
    clients = list(range(3, 11))
    lane = _Lane()
    lane.take = lambda pid: []
    fed: list = []

    def receive(pid, chunk):
        fed.append(pid)
        return []
    sup = _supervisor(lane, {})
    sup.router.receive = receive
    sup.router.peers = dict.fromkeys([1, 2, *clients])
    sup.audit = _Room()
    for pid in clients:
        link = runtime._NativeLink.__new__(runtime._NativeLink)
        link.lane, link.pid, link.closed = lane, pid, False
        link.external = True
        link.busy, link.end, link.wake, link.pending = True, runtime._OPEN, trio.Event(), \
            [b"call"]
        sup.links[pid] = link
    seen: dict = {}

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            await sup._client_turn()          # one client has the turn
            for pid in clients:
                nursery.start_soon(sup._pump_native, pid, sup.links[pid])
            await trio.sleep(0.05)            # the others wait for it, room checked
            sup.audit.room = trio.Event()     # the backlog fills (_Audit.add)
            sup._clients_turn.release()
            await trio.sleep(0.1)
            seen["while full"] = list(fed)
            sup.audit.room.set()              # the writer caught up
            with trio.fail_after(10):
                while len(fed) < len(clients):
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert seen["while full"] == [], seen
    assert sorted(fed) == clients


def test_a_large_message_left_at_a_turns_end_is_not_copied_at_each_turn():
    """What the lane hands Python for one peer is fed to the router SLICE bytes at a
    time, and when the peer's TURN is up the rest waits for its next turn.  That
    rest was a copy (`item[at:]`): a message of N bytes was copied once a turn,
    each time nearly whole, so taking it in was quadratic in its size and each turn
    ended with a copy of up to N bytes.  Measured with real engines: a compartment
    whose five host calls carried 64 MiB of params (message_size = "64MiB") held
    the loop 16.5 s, up to 0.53 s at a time, and another compartment's 5,000
    Clock calls took 15.7 s instead of 0.9 s.  The rest is a view of the item now:
    a turn costs what its slices do, whatever the size of the message."""
    import hashlib
    import tracemalloc
    size = 4 << 20
    item = bytes(range(256)) * (size // 256)
    sup = runtime.Supervisor.__new__(runtime.Supervisor)
    sup._turns = None
    sup.router = type("Router", (), {"peers": {}})()     # no framer to ask: slices
    link = runtime._NativeLink.__new__(runtime._NativeLink)
    got = {"bytes": 0, "sha": hashlib.sha256(), "types": set(), "largest": 0}

    def feed_one(pid, link, chunk):
        got["bytes"] += len(chunk)
        got["sha"].update(chunk)
        got["types"].add(type(chunk))
        got["largest"] = max(got["largest"], len(chunk))
        return True
    sup._feed_one = feed_one
    pending, turns, peak = [item, b"after"], 0, 0
    tracemalloc.start()
    try:
        while pending:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            pending = sup._feed(1, link, pending, 0.0)   # every turn is up at once
            peak = max(peak, tracemalloc.get_traced_memory()[1] - base)
            turns += 1
    finally:
        tracemalloc.stop()
    assert got["bytes"] == size + len(b"after")
    assert got["sha"].digest() == hashlib.sha256(item + b"after").digest()
    assert got["types"] == {bytes} and got["largest"] == runtime.SLICE
    assert turns == size // runtime.SLICE + 1
    # a turn allocated a copy of the rest of the message: ~4 MiB, then less
    assert peak < 256 * 1024, f"a turn allocated {peak} bytes (the message: {size})"


def test_a_large_message_goes_to_the_router_whole_and_small_ones_in_slices():
    """The lane frames what an engine sends and hands Python whole messages; _feed
    cut them into SLICE-byte pieces wherever they fell, and a large message went
    through the router, the connection and its framer piece by piece, to be gathered
    and joined again: ~2.3 ms of the loop a MiB, so a compartment whose calls each
    carried 8 MiB (host calls: the lane forwards none) cost the loop ~17 ms a call,
    twenty times what sending one cost it (400 such Clock calls, `wsuper up` of two
    WAT programs: 6.9 s -> 3.4 s with this).  Slices now end where messages do, and
    a message larger than a SLICE goes whole, of one segment or several (pycapnp
    sends large params in two: an external client's 8 MiB calls were still cut in
    2,048 slices, ~60 ms of the loop each, and a pair of compartments calling each
    other beside it waited ×10 longer at the 99th percentile: benchmarks/
    neighbour.py xhuge); where that cannot be told (`at` inside a message sliced
    before, a table of more segments than a message may have) the slices are as
    they were, and every message comes out of the framer as it went in."""
    from capnp_schemas import wire
    small = wire.frame([b"\1" * 2400])                   # 2,408 bytes
    big = wire.frame([b"\2" * (1 << 20)])
    big2 = wire.frame([b"\3" * (1 << 19)])
    two = wire.frame([b"\4" * 1000, b"\5" * 2000])        # two segments
    bigtwo = wire.frame([b"\6" * 4000, b"\7" * (1 << 20), b"\10" * 8])   # three, large
    # a table of 513 segments (past wire.MAX_SEGMENTS): not measured, sliced
    many = wire.frame([b"\11" * 8] * 513)
    items = [small + big + small + small, two + big2, big2, small + bigtwo + two,
             many + small]
    framer = wire.Framer(max_segments=1024)
    conn = type("Conn", (), {"pending_bytes": property(lambda c: framer.pending)})()
    sup = runtime.Supervisor.__new__(runtime.Supervisor)
    sup._turns = None
    sup.router = type("Router", (), {})()
    sup.router.peers = {1: type("Peer", (), {"conn": conn})()}
    link = runtime._NativeLink.__new__(runtime._NativeLink)
    pieces, out = [], []

    def feed_one(pid, link, chunk):
        assert type(chunk) is bytes
        pieces.append(len(chunk))
        out.extend(b"".join(bytes(s) for s in segs) for segs in framer.feed(chunk))
        return True
    sup._feed_one = feed_one
    pending = items
    while pending:
        pending = sup._feed(1, link, pending, 0.0)      # every turn is up at once
    def body(m):
        return bytes(b"".join(bytes(s) for s in wire.unframe(m, 1024)))
    assert out == [body(m) for m in (small, big, small, small, two, big2, big2, small, bigtwo,
                                     two, many, small)]
    assert framer.pending == 0
    sliced = -(-len(items[4]) // runtime.SLICE)
    # before: every piece a SLICE but an item's last (~390 of them), and of messages
    # of several segments (two, bigtwo) too (~260 of them)
    assert pieces == [len(small), len(big), len(small), len(small), len(two), len(big2),
                      len(big2), len(small), len(bigtwo), len(two)] \
        + [runtime.SLICE] * (sliced - 1) + [len(items[4]) - (sliced - 1) * runtime.SLICE], \
        pieces[:12]


def test_another_thread_takes_a_turn_only_when_it_is_free_at_once_never_beside_another():
    """A host objects' worker thread answers the call whose file operation it did in a
    turn of its own (Turns.try_enter), which it takes only when nobody holds the lock
    (trio's thread waits for I/O, the lane's worker has no turn) and nothing is owed:
    it never waits for it, and the state is still touched by one thread at a time."""
    state = {"owner": None, "clashes": 0, "other": 0, "refused": 0}

    def hold(who):
        if state["owner"] is not None:
            state["clashes"] += 1
        state["owner"] = who
        t = time.perf_counter() + 0.0002
        while time.perf_counter() < t:
            time.sleep(0)
        state["owner"] = None

    async def main():
        turns = Turns()
        turns.install()
        # trio's thread runs (a task, not awaiting): the lock is its own
        seen = []
        t = threading.Thread(target=lambda: seen.append(turns.try_enter()))
        t.start()
        t.join()
        assert seen == [False]
        # trio's thread waits for I/O: free at once
        assert await trio.to_thread.run_sync(lambda: turns.try_enter() and
                                             (turns.here, turns.leave())[0])
        done, stop = [], threading.Event()
        _worker(turns, lambda: hold("worker"), 300, done)

        def other():
            while not stop.is_set():
                if turns.try_enter():
                    try:
                        hold("other")
                        state["other"] += 1
                    finally:
                        turns.leave()
                else:
                    state["refused"] += 1
                time.sleep(0.0001)
        o = threading.Thread(target=other, daemon=True)
        o.start()
        rounds = 0
        with trio.fail_after(30):
            while not done or state["other"] < 20:
                if state["owner"] is not None:
                    state["clashes"] += 1
                rounds += 1
                await trio.sleep(0 if rounds % 2 else 0.0001)
        stop.set()
        await trio.to_thread.run_sync(o.join)
        turns.close()
    trio.run(main)
    assert state["clashes"] == 0
    assert state["other"] >= 20 and state["refused"] > 0


@pytest.mark.parametrize("where", ["trio", "worker"])
def test_sends_to_several_peers_are_written_in_the_order_the_router_gave(where):
    """A Return to a client, the calls held on it sent on to their callee, then
    another Return to that client: the sends to one peer were joined into one
    write wherever they were, so the second Return reached the client before the
    held calls reached their callee, and a client acting on it (calling what it
    names, natively) could overtake them (r257's note: the E-order class it fixed
    in the router).  Consecutive sends to one peer are still one write; in trio's
    thread, and in the lane's host worker (its turn: Turns.here)."""
    lane = _Lane()
    sup = _supervisor(lane, {})
    for link in sup.links.values():
        link.shed, link.shared = None, None
    sup._turns = None
    if where == "worker":
        sup._turns = Turns.__new__(Turns)          # made inside trio; its flags only
        sup._turns.here, sup._turns.stopped = True, False
    sup._perform([fx.Send(1, b"A"), fx.Send(2, b"X1"), fx.Send(2, b"X2"), fx.Send(1, b"B"),
                  fx.Send(1, b"C")])
    assert [d for _, d in lane.written] == [b"A", b"X1X2", b"BC"]
