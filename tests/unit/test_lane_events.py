"""runtime.Supervisor._lane_events with a scripted lane: what came while a batch was
handled is handled next without a trip through trio, and the other tasks still
get their turn (every TURN, and whenever the batch woke one of them)."""
import socket

import trio

from supervisor import runtime


class ScriptedLane:
    """`batches` batches of one message from peer 1, the first signalled on the
    event descriptor, the others already there when the previous one is done."""

    def __init__(self, batches: int):
        self.left = batches
        self._r, self._w = socket.socketpair()
        self._w.send(b"!")
        self.event_fd = self._r.fileno()

    def any_ready(self):
        return self.left > 0

    def ready(self):
        try:
            self._r.recv(16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        if self.left <= 0:
            return []
        self.left -= 1
        if self.left:              # the next one comes while this one is handled
            self._w.send(b"!")
        return [1]

    def take(self, pid):
        return [b"message"]

    def release(self, pid):
        pass


def _supervisor(lane, busy=False):
    sup = runtime.Supervisor.__new__(runtime.Supervisor)
    sup.lane, sup.audit = lane, None
    link = runtime._NativeLink.__new__(runtime._NativeLink)
    link.busy, link.end, link.wake, link.pending = busy, runtime._OPEN, trio.Event(), []
    sup.links = {1: link}
    sup.fed = []
    sup._feed = lambda pid, link, items, until: sup.fed.extend(items) or []
    return sup


async def _run(sup, seen, monkeypatch, turn):
    monkeypatch.setattr(runtime, "TURN", turn)

    async def spy():
        for _ in range(20):
            seen.append(len(sup.fed))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup._lane_events)
        nursery.start_soon(spy)
        with trio.fail_after(5):
            while len(seen) < 20:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()


def test_what_came_during_a_batch_is_handled_before_going_back_to_trio(monkeypatch):
    sup, seen = _supervisor(ScriptedLane(5)), []
    trio.run(_run, sup, seen, monkeypatch, 60.0)
    assert len(sup.fed) == 5
    assert set(seen) <= {0, 5}                  # the five batches in one go


def test_the_other_tasks_get_their_turn_between_batches_after_turn(monkeypatch):
    sup, seen = _supervisor(ScriptedLane(5)), []
    trio.run(_run, sup, seen, monkeypatch, 0.0)
    assert len(sup.fed) == 5
    assert {1, 2, 3, 4} <= set(seen)            # a checkpoint after every batch


def test_a_batch_that_wakes_a_peers_own_task_lets_it_run(monkeypatch):
    sup, seen = _supervisor(ScriptedLane(5), busy=True), []
    woken = []

    async def peer_task():
        link = sup.links[1]
        while True:
            await link.wake.wait()
            link.wake = trio.Event()
            woken.append(sup.lane.left)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_task)
            await _run(sup, seen, monkeypatch, 60.0)
            nursery.cancel_scope.cancel()
    trio.run(main)
    assert sup.fed == []                        # the peer's task takes its items itself
    assert woken and woken[-1] == 0             # and ran while the batches came
    assert woken == sorted(woken, reverse=True)
