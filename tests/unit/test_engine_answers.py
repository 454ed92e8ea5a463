"""When an engine writes its answers (compartments/engine.py, HOLD_FUEL): the
answers to a batch of short calls go out in one write, and the answers before
a call to a method that once ran long go out before it runs.  A real Engine
with real wasmtime, serving tests/integration/guests/spin.wat; its socket
records each write."""
from __future__ import annotations

import os
import random
import socket
import struct
import time

import pytest

from capnp_schemas import protocol, rpcwire, wire
from compartments import engine as E
from compartments.engine import Engine
from compartments.limits import Limits
from compartments.spec import EngineSpec
from fuzz import hostmem
from fuzz.hostmem import Recorded   # the engine's socket: one batch a read, each write apart

GUESTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "integration", "guests")
SPIN_WAT = os.path.join(GUESTS, "spin.wat")
SPIN = 0xc0ffee00000000f1
PING, SLOW = 1, 2          # spin.capnp: ping answers 7 at once; slow burns 2M instructions


@pytest.fixture(autouse=True)
def patient(monkeypatch):
    """Answers are held by fuel and counts here, not by the clock: a test that wants
    HOLD_NS sets it.  (At 2 ms, a run preempted on a loaded machine wrote early.)"""
    monkeypatch.setattr(E, "HOLD_NS", 60 * 10**9)


def make_engine(fuel_per_call: int = 50_000_000):
    return Engine(Recorded(), EngineSpec(name="spin", module=SPIN_WAT, exports=True,
                                         limits=Limits(fuel_per_call=fuel_per_call)))


def started(fuel_per_call: int = 50_000_000):
    """(engine, its socket, the supervisor's Connection, the engine's main object's
    import id): an engine that has been bootstrapped and started."""
    return hostmem.started(SPIN_WAT, fuel_per_call=fuel_per_call)


def serve(*batches, fuel_per_call: int = 50_000_000):
    """An engine that has been bootstrapped and started, then served `batches`
    (lists of methods of Spin, each list sent in one write): the answers to them,
    write by write, as lists of (question id, value or error)."""
    engine, sock, sup, main = started(fuel_per_call)
    asked = {}
    for methods in batches:
        data = b""
        for m in methods:
            qid, msg = sup.send_call(main, SPIN, m)
            asked[qid] = m
            data += msg
        sock.batches.append(data)
    engine.serve()                  # until the batches run out
    out = []
    for w in sock.writes:
        got = []
        for ev in sup.receive(w):
            assert isinstance(ev, protocol.ReturnReceived)
            value = (struct.unpack_from("<i", ev.payload.content.segments[0], 8)[0]
                     if ev.payload is not None else ev.error)
            got.append((asked[ev.question_id], value))
        out.append(got)
    return out


def test_the_answers_to_a_batch_of_short_calls_go_out_in_one_write():
    assert serve([PING] * 5) == [[(PING, 7)] * 5]


def test_answers_go_out_before_a_method_that_once_ran_long_is_entered():
    writes = serve([SLOW], [PING, PING, SLOW, PING])
    # the first slow call could not be told from a short one: the answers of its
    # batch waited for it; from then on the ones before it go out first
    assert writes == [[(SLOW, 1)], [(PING, 7), (PING, 7)], [(SLOW, 1), (PING, 7)]]


def test_a_call_that_runs_out_of_fuel_marks_its_method_long(monkeypatch):
    monkeypatch.setattr(E, "HOLD_FUEL", 10_000)
    writes = serve([PING], [0], [PING, 0])      # method 0 spins until its fuel is gone
    assert [[m for m, _ in w] for w in writes] == [[PING], [0], [PING], [0]]
    assert "CPU budget" in writes[1][0][1]


def test_past_the_held_limit_the_answers_go_out(monkeypatch):
    monkeypatch.setattr(E, "HOLD_MESSAGES", 3)
    writes = serve([PING] * 7)
    assert [len(w) for w in writes] == [3, 3, 1]


def test_a_method_never_seen_writes_first():
    # ping is new but nothing waits; slow is new and the ping's answer waits: it goes
    assert serve([PING, SLOW]) == [[(PING, 7)], [(SLOW, 1)]]


def test_past_the_held_bytes_the_answers_go_out(monkeypatch):
    monkeypatch.setattr(E, "HOLD_BYTES", 1)
    assert [len(w) for w in serve([PING] * 3)] == [1, 1, 1]


def test_answers_that_waited_long_enough_go_out(monkeypatch):
    monkeypatch.setattr(E, "HOLD_NS", 0)
    assert [len(w) for w in serve([PING] * 3)] == [1, 1, 1]


def test_a_held_call_that_took_cpu_marks_its_method_long_and_a_preempted_one_does_not():
    """Fuel does not count what host functions do: a held call that took HOLD_NS by
    the clock is long if this thread spent that much CPU since the answers began to
    wait (a busy machine's preemption does not)."""
    engine = make_engine()
    quick, busy = (1, SPIN, PING), (1, SPIN, SLOW)
    for m in (quick, busy):
        engine._judge(m, True, 1000)            # seen once, short
    engine._outgoing.append(b"x")               # an answer waits
    engine._held_since = time.perf_counter_ns()
    assert engine._may_hold(quick) and engine._held_cpu is not None
    engine._judge(quick, True, 10 * E.HOLD_NS)  # slow by the clock, no CPU spent: preempted
    assert engine._short[quick] is True
    engine._held_cpu -= 10 * E.HOLD_NS          # as if the held call had spent the CPU
    engine._judge(busy, True, 10 * E.HOLD_NS)
    assert engine._short[busy] is False and not engine._may_hold(busy)
    engine._judge(busy, True, 1000)             # one long call marks it for good
    assert engine._short[busy] is False


def test_remembered_methods_are_bounded(monkeypatch):
    monkeypatch.setattr(E, "METHODS", 2)
    engine = make_engine()
    for i in range(5):
        engine._judge((1, i, 0), False, 1000)
    assert len(engine._short) == 2
    engine._outgoing.append(b"x")
    engine._held_since = time.perf_counter_ns()
    assert engine._may_hold((1, 0, 0)) and not engine._may_hold((1, 4, 0))


def test_answers_served_while_an_outgoing_call_waited_go_out_when_it_returns():
    engine, sock, sup, main = started()
    engine.conn.imports[9] = 1              # a capability it holds, as a grant gives one
    ping_qid, ping = sup.send_call(main, SPIN, PING)

    def recv(_n):          # a call to it, and the return of its own call, in one read
        (qid,) = engine.conn.questions
        head, _at = rpcwire.encode_return(qid, True, [])
        return ping + wire.frame([bytes(head)])
    sock.recv = recv
    engine.invoke(9, SPIN, PING, protocol.EMPTY)
    # before the guest runs on, the answer it served meanwhile is out
    assert [ev.question_id for ev in sup.receive(sock.writes[-1])] == [ping_qid]
    assert not engine._outgoing


def test_calls_finished_before_they_are_dispatched_are_not_run(monkeypatch):
    """The supervisor sends Finish for a call whose caller is gone (rpc.capnp:
    Finish before Return cancels it).  A call finished in the same read is not
    run, nor is one of the batch whose Finish came while the guest ran an earlier
    call: each is answered 'canceled'.  The others run."""
    monkeypatch.setattr(E, "LOOK_AHEAD_NS", 0, raising=False)   # look ahead always
    engine, sock, sup, main = started()
    ran = []
    guest = engine._guest
    engine._guest = lambda *a, **kw: (ran.append(a[3]), guest(*a, **kw))[1]
    q1, c1 = sup.send_call(main, SPIN, SLOW)
    q2, c2 = sup.send_call(main, SPIN, SLOW)
    q3, c3 = sup.send_call(main, SPIN, PING)
    q4, c4 = sup.send_call(main, SPIN, PING)
    q5, c5 = sup.send_call(main, SPIN, PING)
    # one read: the calls and q4's Finish; the next (while q1 runs): q2's and q3's
    sock.batches += [c1 + c2 + c3 + c4 + sup.send_finish(q4) + c5,
                     sup.send_finish(q2) + sup.send_finish(q3)]
    engine.serve()
    got = {ev.question_id: ev for w in sock.writes for ev in sup.receive(w)}
    assert sorted(got) == [q1, q2, q3, q4, q5]
    assert [got[q].error for q in (q2, q3, q4)] == ["call canceled"] * 3
    assert got[q1].payload is not None and got[q5].payload is not None
    assert ran == [SLOW, PING]                        # q1 and q5 only
    asked = {q1, q2, q3, q4, q5}                      # every id free on both sides
    assert not asked & set(engine.conn.answers) and not asked & set(sup.questions)


def test_a_trap_report_names_its_function_within_a_bound():
    """The function a trap report names comes from the module's name section, of
    any length: it is cut before the report is made (and so is the cause)."""
    import wasmtime
    name = "A" * 300_000
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, f'(module (func ${name} unreachable) '
                                           f'(func (export "f") call ${name}))')
    f = wasmtime.Instance(store, module, []).exports(store)["f"]
    try:
        f(store)
    except wasmtime.Trap as trap:
        reason = E._trap_reason(trap)
    assert reason == ("wasm `unreachable` instruction executed (in " + "A" * E.TRAP_NAME_LIMIT
                      + f"... ({300_000 - E.TRAP_NAME_LIMIT} more characters))")


CALC_WAT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                        "examples", "calc", "calc.wat")
CALC, OBSERVER = 0xC0FFEE0000000001, 0xC0FFEE0000000003


def test_a_capability_let_go_by_one_call_stays_for_the_next_call_of_the_same_read():
    """Two sumTo calls pass the same observer and arrive in one read; the first
    (n = 0) releases its handle at its end.  The engine released every reference
    the supervisor had sent, the second call's too, which had been read but not
    dispatched yet: its call to the observer failed 'that capability was released'
    (calc: dispatch returned 5), seen with real clients under load.  Now it lets
    go of only its own, and the second call reaches the observer."""
    engine, sock, sup, main = hostmem.started(CALC_WAT)
    observer = object()

    def sum_to(n):
        seg = struct.pack("<QQQ", (1 << 32) | (1 << 48), n, wire.cap_pointer(0))
        return sup.send_call(main, CALC, 2, protocol.Content.standalone([seg]), [observer])

    (q1, first), (q2, second) = sum_to(0), sum_to(1)
    sock.batches.append(first + second)
    try:
        engine.serve()              # until the input ends: the second waits on its step
    except SystemExit:
        pass
    events = [ev for w in sock.writes for ev in sup.receive(w)]
    returns = {ev.question_id: ev for ev in events if isinstance(ev, protocol.ReturnReceived)}
    assert returns[q1].payload is not None                      # sumTo(0) = 0
    assert q2 not in returns, returns[q2].error                 # still running, not failed
    steps = [ev for ev in events if isinstance(ev, protocol.CallReceived)]
    assert [(ev.target, ev.interface_id) for ev in steps] == [(observer, OBSERVER)]
    assert sup.export_id(observer) is not None                  # the second's reference holds


def test_an_answer_read_with_a_call_goes_to_its_own_question_not_to_the_calls():
    """calc's sumTo waits on its call to an observer; the observer's answer comes in
    one read with another sumTo.  The answer's question id is free once it is read
    (no Finish is owed), the second sumTo was served first and its own call got the
    same id, and took the first call's answer: it went on without its observer
    having answered, and the first got the second's answer (seen with real
    clients: a step that failed elsewhere failed this one)."""
    engine, sock, sup, main = hostmem.started(CALC_WAT)
    first, second = object(), object()

    def sum_to(n, observer):
        seg = struct.pack("<QQQ", (1 << 32) | (1 << 48), n, wire.cap_pointer(0))
        return sup.send_call(main, CALC, 2, protocol.Content.standalone([seg]), [observer])

    q1, call1 = sum_to(2, first)
    step = None

    def read_writes():
        events = [ev for w in sock.writes for ev in sup.receive(w)]
        sock.writes.clear()
        return events

    sock.batches.append(call1)
    try:
        engine.serve()
    except SystemExit:
        pass
    (step,) = [ev for ev in read_writes() if isinstance(ev, protocol.CallReceived)]
    assert step.target is first
    q2, call2 = sum_to(1, second)
    answer = sup.send_return(step.answer_id, protocol.EMPTY, no_finish=True)
    sock.batches.append(answer + call2)          # the answer, then a call, in one read
    try:
        engine.serve()
    except SystemExit:
        pass
    events = read_writes()
    answered = {ev.question_id for ev in events if isinstance(ev, protocol.ReturnReceived)}
    asked = [ev.target for ev in events if isinstance(ev, protocol.CallReceived)]
    assert q2 not in answered                    # the second still waits on its observer
    assert asked == [second]                     # its step went out, the first's did not


@pytest.mark.parametrize("where", ["framing", "a plain call's reading"])
def test_an_engine_out_of_memory_taking_a_message_in_says_so_not_that_the_supervisor_erred(
        monkeypatch, capsys, where):
    """An outside review: engines that ran out of memory taking in large calls
    (their address space is bounded) said 'protocol error from supervisor: bad
    framing: MemoryError', and their callers were told the engine 'aborted the
    connection: bad framing': the supervisor blamed for the engine's own bound.
    The same where a read of one plain call is taken in without framing
    (Engine._serve_plain, Connection.plain_calls)."""
    engine, sock, sup, main = started()

    def no_memory(*_args):
        raise MemoryError()
    if where == "framing":
        engine._plain_serving = False
        monkeypatch.setattr(engine.conn._framer, "feed", no_memory)
    else:
        monkeypatch.setattr(engine.conn, "plain_calls", no_memory)
    sock.batches.append(sup.send_call(main, SPIN, PING)[1])
    with pytest.raises(SystemExit) as e:
        engine.serve()
    assert e.value.code == E.EXIT_PROTOCOL
    err = capsys.readouterr().err
    assert "wsuper engine spin: out of memory while receiving a message" in err, err
    assert "protocol error from supervisor" not in err, err
    [abort] = [ev for w in sock.writes for ev in _events(sup, w)
               if isinstance(ev, protocol.AbortReceived)]
    assert "out of memory" in abort.reason and "bad framing" not in abort.reason, abort.reason


def _events(conn, data):
    try:
        return list(conn.receive(data))
    except protocol.ProtocolError:
        return []


def test_a_call_cancelled_while_it_runs_makes_no_more_calls_and_cancels_the_one_it_waits_for():
    """calc's sumTo(5) calls its observer five times.  Its caller cancels it (the
    supervisor's Finish: the caller cancelled, went, or was revoked) while it
    waits on the first: the engine ignored that Finish, and the call ran on to
    its end, its observer called four times more for nobody (and, through a
    compartment, whatever those calls caused down the chain).  Now the call out
    it waits for is finished at once (cancelled at its callee), and its next host
    call fails it, naming the cancellation."""
    engine, sock, sup, main = hostmem.started(CALC_WAT)
    observer = object()
    seg = struct.pack("<QQQ", (1 << 32) | (1 << 48), 5, wire.cap_pointer(0))
    q, call = sup.send_call(main, CALC, 2, protocol.Content.standalone([seg]), [observer])
    events = []

    def seen():
        while sock.writes:
            events.extend(sup.receive(sock.writes.pop(0)))
        return events

    answered = set()

    def answer_step():            # the step it waits for (none: the input ends)
        steps = [ev.answer_id for ev in seen() if isinstance(ev, protocol.CallReceived)
                 and ev.answer_id not in answered]
        if not steps:
            return b""
        answered.add(steps[-1])
        return sup.send_return(steps[-1])

    script = [lambda: call, lambda: sup.send_finish(q), answer_step, answer_step]

    def recv(_n, flags=0):
        if flags & socket.MSG_DONTWAIT or not script:
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError
            return b""
        return script.pop(0)()
    sock.recv = recv
    try:
        engine.serve()
    except SystemExit:
        pass
    seen()
    steps = [ev for ev in events if isinstance(ev, protocol.CallReceived)]
    assert [ev.target for ev in steps] == [observer]              # one step, not five
    assert protocol.FinishReceived(steps[0].answer_id) in events  # cancelled there too
    (ret,) = [ev for ev in events if isinstance(ev, protocol.ReturnReceived)
              and ev.question_id == q]
    assert "was sent Finish for this call while it ran" in ret.error
    assert not engine._serving_at and not engine._asking


def _writes(batches, plain: bool, fuel_per_call: int = 50_000_000) -> list[bytes]:
    """Every write of an engine that served `batches` (each a list of messages made
    by a function of (the supervisor's Connection, the main object's import id),
    sent in one write), with its reads of plain calls taken in without events
    (Engine._serve_plain) or through the general path."""
    engine, sock, sup, main = started(fuel_per_call)
    engine._plain_serving = plain
    for batch in batches:
        sock.batches.append(b"".join(make(sup, main) for make in batch))
    try:
        engine.serve()
    except SystemExit as e:
        sock.writes.append(f"exit {e.code}".encode())
    return sock.writes


def _call(method, caps=()):
    return lambda sup, main: sup.send_call(main, SPIN, method, protocol.EMPTY, list(caps))[1]


def _finish_last(sup, _main):
    """A Finish for the supervisor's last question (the call before it in the batch)."""
    return sup.send_finish(max(q for q in sup.questions))


@pytest.mark.parametrize("look", ["never", "always"])
@pytest.mark.parametrize("seed", range(10))
def test_reads_of_plain_calls_are_served_as_the_general_path_serves_them(
        monkeypatch, seed, look):
    """Engine._serve_plain against the general path (_take, events, _on_call ...):
    the same bytes written, write by write, for random reads of one call or several
    (pings, slow calls, a method the guest does not have, a call passing a
    capability, a call followed by its own Finish, an unknown message).  Whether
    the engine looks ahead before a call (reads the next batch) is pinned, not
    left to the clock: by LOOK_AHEAD_NS's 1 ms, a run preempted between two calls
    of a batch read ahead and the other did not, and their writes differed (1 run
    of the test's 10 in 8, 2 in 6, on a loaded machine, with either path's code)."""
    monkeypatch.setattr(E, "LOOK_AHEAD_NS", 10**18 if look == "never" else -1)
    rng = random.Random(seed)
    kinds = [_call(PING)] * 6 + [_call(SLOW), _call(99), _call(PING, [object()]),
                                 _finish_last]
    batches = []
    for _ in range(24):
        first = rng.choice((_call(PING), _call(PING), _call(SLOW), _call(99)))
        batches.append([first] + [rng.choice(kinds) for _ in range(rng.choice((0, 0, 1, 3)))])
    plain, general = _writes(batches, True), _writes(batches, False)
    assert plain == general
    assert len(wire.Framer().feed(b"".join(plain))) >= len(batches)   # every call answered


@pytest.mark.parametrize("plain", [True, False], ids=["plain serving", "general path"])
def test_a_call_read_alone_is_not_run_if_its_finish_has_come_when_its_turn_does(
        monkeypatch, plain):
    """Before it dispatches a call read LOOK_AHEAD_NS ago or more (a busy machine
    preempted the engine meanwhile, here always), the engine reads what has come
    since: a Finish among it cancels the call, which is answered 'canceled' and
    never run.  The path that serves a read of one plain call at once
    (Engine._serve_plain) skipped that look: a call its caller had cancelled by
    then ran whole for nobody (here 2M instructions; a guest's calls out, to other
    compartments, too), where the general path did not run it."""
    monkeypatch.setattr(E, "LOOK_AHEAD_NS", -1)       # look ahead always
    engine, sock, sup, main = started()
    engine._plain_serving = plain
    ran = []
    guest = engine._guest
    engine._guest = lambda *a, **kw: (ran.append(a[3]), guest(*a, **kw))[1]
    q, call = sup.send_call(main, SPIN, SLOW)
    sock.batches += [call, sup.send_finish(q)]        # the Finish: the next read
    engine.serve()
    (ret,) = [ev for w in sock.writes for ev in sup.receive(w)]
    assert (ret.question_id, ret.error) == (q, "call canceled")
    assert ran == []
    assert q not in engine.conn.answers and q not in sup.questions


class _Supervisor:
    """The engine's socket, playing the supervisor from a script: at each blocking
    read it sends a batch of calls (memio's results, a call out through its
    grant, a new object, a call to an object a result gave; now and then a
    Finish after one), answers a call out the engine made (results or an
    exception; with a batch before or after it in the same read) or sends
    Finish for a call it is serving.  `ahead`: now and then one more read waits
    in the socket, for a read that does not wait (_look_ahead, a wait's)."""

    def __init__(self, rng, steps: int, ahead: bool):
        self.rng, self.steps, self.ahead = rng, steps, ahead
        self.sup = protocol.Connection("supervisor")
        self.writes: list[bytes] = []
        self.queued: list[bytes] = []
        self.calls_out: list[int] = []
        self.serving: list[int] = []
        self.objects: list[int] = []

    def sendall(self, data):
        self.writes.append(bytes(data))
        for ev in self.sup.receive(bytes(data)):
            if isinstance(ev, protocol.CallReceived):
                self.calls_out.append(ev.answer_id)
            elif isinstance(ev, protocol.ReturnReceived):
                if ev.question_id in self.serving:
                    self.serving.remove(ev.question_id)
                for cap in (ev.payload.caps if ev.payload is not None else ()):
                    self.objects.append(cap.import_id)

    def recv(self, _n, flags=0):
        if self.queued:
            return self.queued.pop(0)
        if flags & socket.MSG_DONTWAIT:
            raise BlockingIOError
        if self.steps <= 0:
            return b""
        self.steps -= 1
        data = self._next()
        if self.ahead and not self.rng.randrange(3):
            self.queued.append(self._next())
        return data

    def _calls(self) -> bytes:
        rng, out = self.rng, b""
        for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
            method = rng.choice((0, 0, 5, 5, 7, "object"))
            target = self.main
            if method == "object":
                method, target = 0, rng.choice(self.objects or [self.main])
            q, msg = self.sup.send_call(target, hostmem.IFACE, method, protocol.Content.standalone(
                [struct.pack("<QQ", 1 << 32, rng.getrandbits(32))]))
            self.serving.append(q)
            out += msg + (self.sup.send_finish(q) if not rng.randrange(12) else b"")
        return out

    def _next(self) -> bytes:
        rng = self.rng
        pick = rng.choice(["calls"] + ["answer"] * 4 * bool(self.calls_out)
                          + ["finish"] * bool(self.serving))
        if pick == "calls":
            return self._calls()
        if pick == "finish":
            q = rng.choice(self.serving)
            open_ = self.sup.questions.get(q) is not None and not self.sup.questions[q].finished
            return self.sup.send_finish(q) if open_ else self._calls()
        aid = self.calls_out.pop(rng.randrange(len(self.calls_out)))
        msg = self.sup.send_return(aid, protocol.Content.standalone([struct.pack(
            "<QQ", 1 << 32, 9)]), no_finish=True) if rng.randrange(4) else \
            self.sup.send_exception(aid, "no", "failed", no_finish=True)
        before, after = (self._calls() if not rng.randrange(4) else b"" for _ in range(2))
        return before + msg + after


def _scripted(seed: int, plain: bool, ahead: bool) -> tuple[list[bytes], object]:
    """Every write of a memio engine (a grant to call out through, its arguments
    set for a results_set, a call out and a new object) served by _Supervisor's
    script `seed`, and how it ended."""
    from capnp_schemas import payloads
    from compartments.engine import ENGINE_INTERFACE
    rng = random.Random(seed)
    sock = _Supervisor(rng, 40, ahead)
    engine = Engine(sock, EngineSpec(name="memio", module=hostmem.MEMIO, exports=True, limits=Limits(
        message_size=hostmem.LIMIT, fuel_per_call=rng.choice((50_000_000, 3000, 800)))))
    engine._plain_serving = plain
    sup = sock.sup
    for msg in (lambda: sup.send_bootstrap()[1], lambda: sup.send_call(
            sock.objects.pop(), ENGINE_INTERFACE, 0,
            payloads.grants_content([("peer", "compartment", "")]), [object()])[1]):
        sock.queued.append(msg())
        engine._pump()
        engine._flush()
    sock.main = sock.objects.pop()
    params = hostmem.framed([hostmem.struct_ptr(0, 2, 0), 5, 6])
    at, caps, out = 4096, 9192, 8192
    engine.memory.write(engine.store, params, at)
    engine.memory.write(engine.store, struct.pack("<i", engine.handles.add(engine._local(1))), caps)
    engine.memory.write(engine.store, struct.pack("<4i", at, len(params), caps, 1) + struct.pack(
        "<iQ6i3i", engine.grants["peer"][0], hostmem.IFACE, 0, at, len(params), 0, 0, out,
        0, 0, 0), hostmem.ARGS)
    sock.writes.clear()
    try:
        engine.serve()
        end = "served"
    except SystemExit as e:
        end = e.code
    return sock.writes, end


@pytest.mark.parametrize("ahead", [False, True], ids=["reads one at a time", "reads waiting"])
@pytest.mark.parametrize("seed", range(12))
def test_scripted_reads_with_calls_out_and_finishes_are_served_as_the_general_path_serves_them(
        monkeypatch, seed, ahead):
    """Engine._serve_plain and the loop's _serve_call against the general path, on
    scripted exchanges: batches of calls whose guests call out, answers to those
    calls out read with more calls, calls cancelled in their read, in the next or
    while their guest waits, results with capabilities and calls on them, out of
    fuel.  With reads waiting in the socket, the engine looks ahead before every
    call (a preempted engine's): served at once, a read of one call skipped that."""
    monkeypatch.setattr(E, "BACKLOG_GRACE", 0)            # a nested wait: no sleeping
    if ahead:
        monkeypatch.setattr(E, "LOOK_AHEAD_NS", -1)
    plain, general = _scripted(seed, True, ahead), _scripted(seed, False, ahead)
    assert plain == general
    assert len(plain[0]) > 20


def _hostile_reads(seed: int, sup, main) -> tuple[list[bytes], dict]:
    """Reads of 1-6 calls to memio's method 1 (its params read and sent back as its
    results) whose params a hostile caller made: fuzz.protocol's content seeds
    mutated as it mutates them, now and then a word past the root overwritten with
    a pointer out of the segment (into the header that will follow it), far, a
    capability, or noise; sent by the caller's Connection, taken in by the
    supervisor's (which refuses what its checks refuse: the caller is cut off) and
    spliced into the Call to the engine as the router splices them (the fast lane's
    splice gives the same bytes); now and then an interface or method memio does
    not serve, or the call's Finish after it.  And for each call to method 1, what
    its guest must get back: the copy of the params its own message carries, or
    why that copy is refused."""
    from fuzz import protocol as F
    from fuzz.seeds import Seed, content_seeds
    rng = random.Random(seed)
    seeds = [Seed(segs, mod) for mod, segs in content_seeds()]
    caller, taken = protocol.Connection("caller"), protocol.Connection("supervisor<-caller")
    caller.imports[taken._export(object())] = 1
    reads, expect = [], {}
    while len(reads) < 30:
        data = b""
        for _ in range(rng.choice((1, 1, 2, 3, 6))):
            try:
                segs = [bytearray(s) for s in wire.unframe(F.mutate(rng, rng.choice(seeds), seeds))]
            except wire.WireError:
                continue
            n = len(segs[0]) // 8
            for _ in range(rng.choice((0, 0, 1, 2)) if n > 1 else 0):
                at = rng.randrange(1, n)
                struct.pack_into("<Q", segs[0], 8 * at, rng.choice((
                    rng.getrandbits(64), 2 | rng.randrange(64) << 3, 3,
                    # a struct reaching past the end: the header after it, or beyond
                    (rng.randrange(n - at - 2, n - at + 24) & 0x3FFFFFFF) << 2
                    | rng.randrange(1, 4) << 32 | rng.randrange(3) << 48,
                    (rng.randrange(-8, 64) & 0x3FFFFFFF) << 2 | rng.randrange(4) << 32
                    | rng.randrange(3) << 48)))
            iface, method = rng.choice(((hostmem.IFACE, 1),) * 5 + (
                (hostmem.IFACE, 65535), (2**64 - 1, 1), (0, 1)))
            try:
                _q, sent = caller.send_call(0, iface, method, protocol.Content.standalone(
                    [bytes(s) for s in segs]))
                [ev] = taken.receive(sent)
            except (wire.WireError, protocol.ProtocolError):
                caller, taken = protocol.Connection("caller"), protocol.Connection("s<-c")
                caller.imports[taken._export(object())] = 1
                continue                        # refused: that caller is cut off
            caller.receive(taken.send_return(ev.answer_id, no_finish=True))   # ids reused
            q, msg = sup.send_call(main, iface, method, ev.payload.content)
            if (iface, method) == (hostmem.IFACE, 1):
                # the copy of the params its message carries, that message taken alone
                # (params that reach their first word see the new root there, as
                # Connection._splice says: a guest may read its own Call's header)
                alone = protocol.Connection("alone")
                for _ in range(main + 1):
                    alone._export(object())
                try:
                    [received] = alone.receive(msg)
                    expect[q] = received.payload.content.single_segment_copy(hostmem.LIMIT // 8)
                except wire.WireError as e:
                    expect[q] = str(e)
            data += msg + (sup.send_finish(q) if not rng.randrange(8) else b"")
        if data:                                # an empty read is the end of the stream
            reads.append(data)
    return reads, expect


@pytest.mark.parametrize("seed", range(6))
def test_calls_whose_params_a_hostile_caller_made_are_each_answered_with_their_own(
        monkeypatch, seed):
    """A caller's params reach the engine that serves them as it made them, but
    for their root word (the supervisor forwards a plain call natively after
    checking only what its route needs): Engine._serve_plain (Connection.plain_calls'
    reading, framed and decoded in C) against the general path, on reads of such
    calls, mutated, with pointers out of their segment or into the next message.
    Both write the same bytes, serve to the end, and each call's guest gets its
    own params back (memio's method 1 echoes them), or its call fails with the
    reason its copy was refused: never another call's bytes."""
    monkeypatch.setattr(E, "LOOK_AHEAD_NS", 10**18)
    out = {}
    for plain in (True, False):
        engine, sock, sup, main = hostmem.started(hostmem.MEMIO, message_size=hostmem.LIMIT)
        engine._plain_serving = plain
        engine.memory.write(engine.store, struct.pack("<4i", 0, 4096, 0, 0), hostmem.ARGS)
        reads, expect = _hostile_reads(seed, sup, main)
        sock.batches.extend(reads)
        engine.serve()                  # until the reads run out: never a protocol error
        out[plain] = sock.writes
    assert out[True] == out[False]
    echoed = 0
    for ev in sup.receive(b"".join(out[True])):
        if ev.question_id in expect and ev.error is None:
            assert ev.payload.content.single_segment_copy() == expect[ev.question_id]
            echoed += 1
        elif ev.question_id in expect and ev.error != "call canceled":
            assert ev.error.startswith("memio: message rejected: ") or "dispatch returned" \
                in ev.error, ev.error
    assert echoed >= 10


def test_only_the_supervisors_refusals_of_an_answer_reach_the_caller_of_a_bare_failure():
    """A guest that fails its call with a bare status after a call out failed
    (calc.wat's 'dispatch returned 5') has its caller told the supervisor's refusal
    of that call out's answer (r236): the limit, sizes and a name, worded as the
    protocol core and the router word them, taken here from them.  Any other
    reason is the callee's words, which the guest heard and did not pass on: they
    stay the guest's (a callee's text must not reach its caller's caller behind
    the compartment's back), even made to look like a refusal."""
    from types import SimpleNamespace

    from capnp_schemas import protocol as P, rpc, wire
    from compartments.engine import _refusal
    from supervisor.router import CallError, Router
    # the protocol core's: results past the capability limit, a transform too long
    a, b = P.Connection("a"), P.Connection("b")
    qid, data = a.send_bootstrap()
    (boot,) = b.receive(data)
    (ret,) = a.receive(b.send_return(boot.answer_id, P.Content.capability(0), [object()]))
    imp = ret.payload.caps[0].import_id
    reasons = []
    q, data = a.send_call(imp, 1, 0)
    (call,) = b.receive(data)
    b.send_exception(call.answer_id, "(the return below stands for it)")
    m = rpc.Message.new_message()
    r = m.init("return")
    r.answerId, r.releaseParamCaps = call.answer_id, False
    table = r.init("results").init("capTable", 257)
    for i in range(257):
        table[i].none = None
    (ev,) = a.receive(wire.frame(m.to_segments()))
    reasons = [ev.error]
    # ... and its words for a transform past its bounds, as Plain.over has them
    for steps, budget in ((65, 64), (10, 5)):
        pa = SimpleNamespace(questionId=1, transform=[None] * steps)
        with pytest.raises(P.rpcwire._OverSteps) as e:
            P.rpcwire._promised(pa, [budget])
        reasons.append(f"results refused: {e.value}")
    # the router's: results past an external client's message_size, an answer past
    # its receiver's
    peer = SimpleNamespace(kind="external", name="external",
                           limits=SimpleNamespace(message_size=64))
    big = P.Content.standalone([(100 << 32).to_bytes(8, "little") + bytes(8 * 100)])
    reasons.append(Router._oversized(peer, big, "results").args[0])
    peer.name = "calc"
    with pytest.raises(CallError) as e:
        Router._check_size(peer, big)
    reasons.append(e.value.args[0])
    for reason in reasons:
        assert _refusal(reason) == reason, reason
    for words in ("the observer is out of paper", "results refused: my secret is 42",
                  reasons[0] + " and my secret", "x" + reasons[3],
                  reasons[3].replace("external", "my secret")):
        assert _refusal(words) is None, words
