"""The reference monitor without processes: Router + Connections playing the engines.

No sockets, no files: host objects are answered by a fake host layer that
records what it was asked (tests/unit/test_hostcaps.py tests the real one).
"""
import re

import pytest
import struct

from capnp_schemas import hosted, payloads, protocol as P, wire
from capnp_schemas.protocol import Content
from supervisor import effects as fx, router as R
from supervisor.policy import Grant

CALC = 0xC0FFEE0000000001
CLOCK = hosted.BY_KIND["clock"].id


def grant(name, target, kind="compartment", methods=None, **kw):
    """A policy.Grant as preflight hands it over (`methods`: the resolved allow-list)."""
    return Grant(name, kind, target, allow=("x",) if methods is not None else None,
                 methods=methods, **kw)


def answer_control(engine, ev, no_finish=False) -> bool:
    """An engine's side of bootstrap and start (its grants into `engine.grants`, its
    main object exported if it has one); False if `ev` is neither."""
    if isinstance(ev, P.BootstrapRequested):
        engine.send(engine.conn.send_return(ev.answer_id, Content.capability(0),
                                            [engine.control]))
        return True
    if not (isinstance(ev, P.CallReceived) and ev.target is engine.control):
        return False
    segs = ev.payload.content.message()
    elems = wire.struct_list_elements(segs, wire.struct_pointer_field(segs, (0, 0), 0))
    for i, (s, start, d, p) in enumerate(elems):
        idx = wire.capability_index(segs, (s, start + d + 1))
        engine.grants[i] = ev.payload.caps[idx]
    seg = bytearray(struct.pack("<QQQ", (1 << 32) | (1 << 48), 1, 0))
    caps = []
    if engine.exports:
        wire.set_word(seg, 2, wire.cap_pointer(0))
        caps = [engine.main]
    engine.send(engine.conn.send_return(ev.answer_id, Content.standalone([seg]), caps,
                                        no_finish=no_finish))
    return True


class FakeEngine:
    """The engine side of the protocol, driven by hand."""

    def deliver(self, effects):
        for e in effects:
            if isinstance(e, fx.Send):
                FakeEngine.all[e.peer].feed(e.data)
            elif isinstance(e, fx.HostCall):
                self.host_calls.append(e)
                if self.answer_hosts:
                    self.deliver(self.router.host_returned(e.token, Content()))
            else:
                self.effects.append(e)

    def feed(self, data):
        for ev in self.conn.receive(data):
            if answer_control(self, ev):
                pass
            elif isinstance(ev, (P.CallReceived, P.ReturnReceived, P.ExportReleased)):
                self.inbox.append(ev)

    def send(self, data):
        self.deliver(self.router.receive(self.pid, data))


FakeEngine.all = {}


def start(router, name, grants=(), exports=False, hosts=None, answer_hosts=True,
          later=False):
    """A compartment's engine, started; with `later`, (the engine, what starts it):
    it is starting until `engine.deliver(what starts it)`."""
    e = FakeEngine.__new__(FakeEngine)
    e.router, e.name, e.exports = router, name, exports
    e.conn = P.Connection(name)
    e.control, e.main = object(), object()
    e.grants, e.inbox, e.effects, e.host_calls = {}, [], [], []
    e.answer_hosts = answer_hosts
    e.pid, effects = router.add_engine(name, list(grants), hosts or {})
    FakeEngine.all[e.pid] = e
    if later:
        return e, effects
    e.deliver(effects)
    return e


def test_grant_routes_calls_and_results_between_compartments():
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    assert fx.Started("calc", True) in calc.effects and fx.Started("app", True) in app.effects
    handle = app.grants[0].import_id
    _q, data = app.conn.send_call(handle, CALC, 0, Content.standalone([struct.pack("<QQ", 1 << 32, 5)]))
    app.send(data)
    (call,) = calc.inbox
    assert call.target is calc.main and call.interface_id == CALC
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([struct.pack("<QQ", 1 << 32, 6)])))
    (ret,) = app.inbox
    assert struct.unpack_from("<Q", wire.unframe(ret.payload.content.single_segment_copy())[0], 8)[0] == 6


def test_wrong_interface_on_a_grant_is_refused_without_reaching_the_callee():
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, 0x1234, 0)
    app.send(data)
    assert calc.inbox == []
    (ret,) = app.inbox
    assert ret.error_type == "unimplemented" and "does not implement" in ret.error


BASE, ROOT = 0xC0FFEE00000000B1, 0xC0FFEE00000000B0


@pytest.mark.parametrize("iface,reaches", [(CALC, True), (BASE, True), (ROOT, True),
                                           (0x1234, False)])
def test_a_main_object_is_called_with_the_interfaces_it_extends(iface, reaches):
    """Cap'n Proto calls an inherited method with the id of the interface that
    declares it: a compartment exporting Calc extends(Base) (Base extends(Root)) is
    called reset with Base's id.  The grant's check of the interface id knew the
    exported one only, and refused every inherited method ("does not implement"),
    though an allow list may name them (Calc.reset, reset).  What it extends
    reaches it; any other interface still does not."""
    router = R.Router({"calc": CALC, "app": None}, extends={CALC: (BASE, ROOT), BASE: (ROOT,)})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, iface, 0)
    app.send(data)
    if reaches:
        (call,) = calc.inbox
        assert call.target is calc.main and call.interface_id == iface and app.inbox == []
    else:
        assert calc.inbox == []
        (ret,) = app.inbox
        assert ret.error_type == "unimplemented" and "does not implement" in ret.error


def test_an_allow_list_holds_an_inherited_method_of_a_main_object_to_it():
    """Deny by default still: with allow = ["add", "reset"] on a Calc extends(Base,
    Root), Base.reset passes and Root.wipe is refused by the membrane."""
    router = R.Router({"calc": CALC, "app": None}, extends={CALC: (BASE, ROOT)})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", methods=frozenset({(CALC, 0), (BASE, 0)}),
                                      mentioned=frozenset({CALC, BASE, ROOT}))])
    for iface in (BASE, ROOT):
        _q, data = app.conn.send_call(app.grants[0].import_id, iface, 0)
        app.send(data)
    (call,) = calc.inbox
    assert call.interface_id == BASE
    (ret,) = app.inbox
    assert "is not allowed" in ret.error


def test_forged_export_id_aborts_only_that_connection():
    router = R.Router({"calc": CALC, "app": None, "evil": None}, audit=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    evil = start(router, "evil")
    m = P.rpc.Message.new_message()
    c = m.init("call")
    c.target.importedCap = 999
    c.sendResultsTo.caller = None
    effects = router.receive(evil.pid, wire.frame(m.to_segments()))
    assert any(isinstance(e, fx.Close) and e.peer == evil.pid for e in effects)
    (record,) = [e.record for e in effects if isinstance(e, fx.Audit)]
    assert record["peer"] == "evil" and record["event"] == "connection aborted"
    assert "export id 999 was never issued" in record["reason"]
    # app still reaches calc
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    assert len(calc.inbox) == 1


def test_callee_crash_fails_calls_in_flight_promptly():
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    app.deliver(router.disconnected(calc.pid, "engine killed by SIGKILL"))
    (ret,) = app.inbox
    assert ret.error_type == "disconnected" and "calc" in ret.error
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    assert app.inbox[-1].error_type == "disconnected"


def test_capability_in_a_result_is_released_at_its_host_when_the_holder_releases_it():
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 1)
    app.send(data)
    (call,) = calc.inbox
    counter = object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([seg]), [counter]))
    (ret,) = app.inbox
    (got,) = ret.payload.caps
    assert isinstance(got, P.Imported)
    assert any(e.obj is counter for e in calc.conn.exports.values())
    # app calls it: the call reaches calc's counter object
    _q, data = app.conn.send_call(got.import_id, 0xC0FFEE0000000002, 0)
    app.send(data)
    assert calc.inbox[-1].target is counter
    # app releases its handle: the supervisor lets go of its import, calc hears of it
    app.send(app.conn.send_release(got.import_id))
    assert P.ExportReleased(counter) in calc.inbox
    assert not any(e.obj is counter for e in calc.conn.exports.values())


@pytest.mark.parametrize("how", ["params", "results"])
def test_a_capability_passed_twice_in_one_message_stays_held_for_its_other_holders(how):
    """app holds calc's counter and hands it to other twice in one message (the
    params of a call, or the results of other's call to app: `[ctr, ctr]`).  The
    entry that made in other's c-list was never counted as a reference (its
    refcount was 2, not 1), so when other let it go the router dropped a reference
    that was app's: the counter was released at calc while app held it, app's
    calls on it failed ('released'), and calc could give its export id to another
    object (r256, fuzz/attenuation_scenarios.py: calc's own engine was then handed
    a reference to an export it had released, a protocol error there)."""
    router = R.Router({"calc": CALC, "app": CALC, "other": CALC})
    calc = start(router, "calc", exports=True)
    other = start(router, "other", [grant("app", "app")], exports=True)
    app = start(router, "app", [grant("calc", "calc"), grant("other", "other")], exports=True)
    counter, ctr = _counter_from(router, app, calc, app.grants[0].import_id)
    twice = [P.RemoteRef(ctr), P.RemoteRef(ctr)]
    if how == "params":
        app.send(app.conn.send_call(app.grants[1].import_id, CALC, 0, caps=twice)[1])
        got = other.inbox.pop()
        other.send(other.conn.send_return(got.answer_id))
        app.inbox.clear()
    else:
        other.send(other.conn.send_call(other.grants[0].import_id, CALC, 0)[1])
        call = app.inbox.pop()
        seg = struct.pack("<QQQ", 2 << 48, wire.cap_pointer(0), wire.cap_pointer(1))
        app.send(app.conn.send_return(call.answer_id, Content.standalone([seg]), twice))
        got = other.inbox.pop()
    held = {c.import_id for c in got.payload.caps}
    assert len(held) == 1
    other.send(other.conn.send_release(held.pop()))        # other lets go of both
    assert P.ExportReleased(counter) not in calc.inbox
    app.send(app.conn.send_call(ctr, COUNTER, 0)[1])        # app's own is still there
    assert calc.inbox[-1].target is counter
    app.send(app.conn.send_release(ctr))                    # and goes with app's release
    assert P.ExportReleased(counter) in calc.inbox


def test_call_time_fails_slow_calls_and_late_answers_are_dropped():
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None},
                      limits={"calc": R.Limits(call_time=2.0)}, clock=lambda: now[0])
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    (slow,) = calc.inbox
    now[0] = 1.9
    app.deliver(router.expire())
    assert app.inbox == []                      # not yet
    now[0] = 2.1
    app.deliver(router.expire())
    (ret,) = app.inbox
    assert ret.error_type == "overloaded" and "did not answer within 2 s" in ret.error
    # calc was told (Finish); its late answer, even carrying a capability, goes nowhere
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    late = object()
    calc.send(calc.conn.send_return(slow.answer_id, Content.standalone([seg]), [late]))
    assert len(app.inbox) == 1
    assert P.ExportReleased(late) in calc.inbox    # released at once, not leaked


def test_a_reused_question_id_does_not_inherit_an_earlier_calls_deadline():
    """Question ids are reused: a call answered at once left its deadline in the
    heap, and a later call to the same callee under the same id failed at that
    deadline, long before its own call_time."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None},
                      limits={"calc": R.Limits(call_time=5.0)}, clock=lambda: now[0])
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    (first,) = calc.inbox
    calc.inbox.clear()
    calc.send(calc.conn.send_return(first.answer_id))           # answered at once
    app.inbox.clear()
    now[0] = 4.0
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    (second,) = calc.inbox
    assert second.answer_id == first.answer_id                   # the same id, reused
    now[0] = 5.5
    app.deliver(router.expire())
    assert app.inbox == []                                       # its own deadline: 9
    now[0] = 9.1
    app.deliver(router.expire())
    (ret,) = app.inbox
    assert "did not answer within 5 s" in ret.error


COUNTER = 0xC0FFEE0000000002
NAMES = {CALC: ("Calc", {0: "add", 1: "newCounter", 2: "sumTo"}), COUNTER: ("Counter", {0: "inc"})}


def _counter_from(router, app, calc, handle):
    """app calls newCounter through `handle`; calc answers with a fresh counter object."""
    _q, data = app.conn.send_call(handle, CALC, 1)
    app.send(data)
    call = calc.inbox.pop()
    counter = object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([seg]), [counter]))
    ret = app.inbox.pop()
    return counter, ret.payload.caps[0].import_id


def test_allow_list_refuses_other_methods_and_applies_to_what_comes_through_it():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    allow = frozenset({(CALC, 0), (CALC, 1)})          # add, newCounter; not sumTo, not inc
    app = start(router, "app", [grant("calc", "calc", methods=allow)])
    h = app.grants[0].import_id
    _q, data = app.conn.send_call(h, CALC, 2)           # sumTo: not allowed
    effects = router.receive(app.pid, data)
    app.deliver(effects)
    assert calc.inbox == []
    (ret,) = app.inbox
    assert "app.calc: Calc.sumTo is not allowed (allow = [Calc.add, Calc.newCounter])" in ret.error
    assert any(isinstance(e, fx.Denied) for e in effects)
    app.inbox.clear()
    counter, c = _counter_from(router, app, calc, h)
    _q, data = app.conn.send_call(c, COUNTER, 0)        # Counter is not restricted
    app.send(data)
    assert calc.inbox[-1].target is counter


def test_a_denied_call_does_not_cost_the_supervisor_the_length_of_the_allow_list(monkeypatch):
    """A denial names the methods the grant allows, and that text was made anew
    for every call refused: each of them named, sorted and joined (then cut to
    the reason's limit), so with a long allow list (10,000 methods of a 20,000
    method interface, as a review of check's speed used) a compartment sending
    calls it knew would be denied cost the supervisor's one loop ~4 ms each, ~80
    times a plain call, at the expense of every other compartment.  The text is
    made once a membrane."""
    from supervisor.membrane import Names
    big = 0xB16B16B16B16B16B
    names = {**NAMES, big: ("Big", {i: f"method{i}" for i in range(2000)})}
    router = R.Router({"big": big, "app": None}, names=names)
    start(router, "big", exports=True)
    allow = frozenset((big, i) for i in range(0, 2000, 2))
    app = start(router, "app", [grant("big", "big", methods=allow)])
    h = app.grants[0].import_id
    named = []
    real = Names.call
    monkeypatch.setattr(Names, "call", lambda self, i, j: named.append(j) or real(self, i, j))
    for n in range(5):
        del named[:]
        _q, data = app.conn.send_call(h, big, 1)          # not allowed
        app.send(data)
        assert "app.big: Big.method1 is not allowed (allow = [Big.method0, Big.method10, " \
            in app.inbox.pop().error
        if n:
            assert len(named) < 10, len(named)     # not one a method allowed


def _reasons_made(monkeypatch) -> list:
    """The length of every reason a CallError is made with (before its own cut)."""
    from supervisor import caps
    made, real = [], caps.bounded
    monkeypatch.setattr(caps, "bounded", lambda text, limit: made.append(len(text)) or
                        real(text, limit))
    return made


def test_a_denial_names_a_long_allow_list_in_text_of_bounded_size(monkeypatch):
    """The text of a denial was made once a membrane (above), but whole, and every
    denial copied all of it into its reason, which the reason's cut then took to
    2,000 characters: 10,000 allowed methods with names of 1,000 characters (no
    bound in a schema) made each denied call build a 10 MB string, ~0.8 ms of the
    supervisor's loop, 33 times a plain call.  The allow list is named as far as
    a bounded text takes it, and the rest counted."""
    big = 0xB16B16B16B16B16B
    names = {**NAMES, big: ("Big", {i: f"m{i:04d}" + "x" * 300 for i in range(2000)})}
    router = R.Router({"big": big, "app": None}, names=names)
    start(router, "big", exports=True)
    app = start(router, "app", [grant("big", "big", methods=frozenset(
        (big, i) for i in range(0, 2000, 2)))])
    h = app.grants[0].import_id
    made = _reasons_made(monkeypatch)
    for _ in range(3):
        app.send(app.conn.send_call(h, big, 1)[1])          # not allowed
        error = app.inbox.pop().error
        assert error.startswith("denied: app.big: Big.m0001" + "x" * 300 + " is not allowed "
                                "(allow = [Big.m0000" + "x" * 300 + ", Big.m0002")
        assert re.search(r", \.\.\. \(99[0-9] more\)\]\)$", error), error[-200:]
    assert made and max(made) < 3000, max(made)


def test_a_refused_gateway_get_names_the_exported_compartments_in_bounded_text(monkeypatch):
    """Gateway.get of a name not exported joined every exported compartment's name
    into its reason, for each refusal (20,000 of them: ~0.5 ms of the supervisor's
    loop a refused get, 16 times one that is not)."""
    exported = [f"c{i:05d}" + "x" * 58 for i in range(5000)]
    router = R.Router({"calc": CALC, **{n: None for n in exported}},
                      external=("calc", *exported), names=NAMES)
    start(router, "calc", exports=True)
    c = client(router)
    c.send(c.conn.send_bootstrap()[1])
    gateway = c.inbox.pop().payload.caps[0].import_id
    get = hosted.GATEWAY.method("get")
    made = _reasons_made(monkeypatch)
    c.send(c.conn.send_call(gateway, hosted.GATEWAY.id, get.ordinal,
                            payloads.build(get.params, {"name": "bogus"})[0])[1])
    error = c.inbox.pop().error
    assert error.startswith("no compartment named 'bogus' is exported to the outside "
                            "(exported: calc, c00000" + "x" * 58)
    assert re.search(r", \.\.\. \(49[0-9][0-9] more\)\)$", error), error[-200:]
    assert made and max(made) < 3000, max(made)


def test_gateway_list_is_built_once_not_for_every_call(monkeypatch):
    """Gateway.list built its answer (every exported compartment's name) anew for
    each call: 20,000 exported compartments made each call of an external client
    cost the supervisor's loop ~2.9 ms, ~100 times a plain call.  Built once."""
    exported = [f"c{i:05d}" for i in range(300)]
    router = R.Router({"calc": CALC, **{n: None for n in exported}},
                      external=("calc", *exported), names=NAMES)
    start(router, "calc", exports=True)
    c = client(router)
    c.send(c.conn.send_bootstrap()[1])
    gateway = c.inbox.pop().payload.caps[0].import_id
    built = []
    real = R.build
    monkeypatch.setattr(R, "build", lambda struct, values: built.append(
        len(values.get("names", ()))) or real(struct, values))
    lst = hosted.GATEWAY.method("list")
    for _ in range(4):
        c.send(c.conn.send_call(gateway, hosted.GATEWAY.id, lst.ordinal)[1])
        got = payloads.read(lst.results, c.inbox.pop().payload.content, 1 << 20)
        assert got["names"] == ["calc", *exported]
    assert built.count(301) <= 1, built


def test_allow_list_naming_another_interface_restricts_it_too():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", methods=frozenset({(CALC, 1), (COUNTER, 1)}))])
    _counter, c = _counter_from(router, app, calc, app.grants[0].import_id)
    _q, data = app.conn.send_call(c, COUNTER, 0)        # inc is not in the list
    app.send(data)
    assert "app.calc>Calc.newCounter: Counter.inc is not allowed" in app.inbox[-1].error


def test_revocation_kills_the_grant_what_came_through_it_and_calls_in_flight():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    h = app.grants[0].import_id
    _counter, c = _counter_from(router, app, calc, h)
    _q, data = app.conn.send_call(h, CALC, 0)           # in flight when revoked
    app.send(data)
    slow = calc.inbox.pop()
    app.deliver(router.revoke("app.calc"))
    assert "app.calc was revoked while this call was in flight" in app.inbox.pop().error
    # the late answer goes nowhere
    calc.send(calc.conn.send_return(slow.answer_id))
    assert app.inbox == []
    for target, method in ((h, 0), (c, 0)):
        _q, data = app.conn.send_call(target, CALC if target == h else COUNTER, method)
        app.send(data)
        assert "was revoked" in app.inbox.pop().error
    assert calc.inbox == []
    with pytest.raises(KeyError, match="no revocable grant 'app.log'"):
        router.revoke("app.log")


def test_capabilities_passed_into_a_revoked_grant_cannot_be_called_back():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    observer = object()
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 2, caps=[observer])
    app.send(data)
    call = calc.inbox.pop()
    passed = call.payload.caps[0].import_id
    app.deliver(router.revoke("app.calc"))
    _q, data = calc.conn.send_call(passed, 0xC0FFEE0000000003, 0)   # calc calls it back
    calc.send(data)
    # named as what it is, and the grant it was passed through (for the audit too)
    assert re.search(r"denied: app object #\d+ \(passed through app\.calc\) was revoked",
                     calc.inbox.pop().error)
    assert not any(isinstance(e, P.CallReceived) and e.target is observer for e in app.inbox)


@pytest.mark.parametrize("how", ["params", "results of a call back"])
def test_what_the_holder_hands_across_a_grant_is_named_as_its_own_either_way(how):
    """app's objects that cross its grant to calc are named in denials and in the
    audit as what they are and the grant they went through: in the params of a
    call through the grant, and in the answer to a call back on what app passed
    (an observer's step answering with an object of app's).  The latter were
    named as the grant ('app.calc (passed through)>Observer.step'), as if calc's
    call went to app.calc."""
    router = R.Router({"calc": CALC, "app": None},
                      names={**NAMES, OBSERVER: ("Observer", {0: "step"})}, audit=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    observer = object()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 2, caps=[observer])[1])
    passed = calc.inbox.pop().payload.caps[0].import_id
    if how == "params":
        held = passed
    else:
        calc.send(calc.conn.send_call(passed, OBSERVER, 0)[1])
        step = app.inbox.pop()
        seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
        app.send(app.conn.send_return(step.answer_id, Content.standalone([seg]), [object()]))
        held = calc.inbox.pop().payload.caps[0].import_id
    app.deliver(router.revoke("app.calc"))
    effects = router.receive(calc.pid, calc.conn.send_call(held, COUNTER, 0)[1])
    calc.deliver(effects)
    assert re.fullmatch(r"denied: app object #\d+ \(passed through app\.calc\) was revoked",
                        calc.inbox.pop().error)
    (record,) = [e.record for e in effects if isinstance(e, fx.Audit)]
    assert re.fullmatch(r"app object #\d+ \(passed through app\.calc\)", record["capability"])


def test_a_capability_passed_back_and_forth_across_a_grant_is_wrapped_once_and_counted_once():
    """app passes its own observer to calc 50 times and calc hands it back each time:
    the grant's membrane stays once on its way (it used to be wrapped again at every
    crossing, so each call walked a chain that grew without bound and spent a
    max_uses quota once a layer), revocation still cuts it, and a call through it
    spends one use."""
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True, max_uses=60)])
    h = app.grants[0].import_id
    observer, held = object(), None
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    for _ in range(50):
        _q, data = app.conn.send_call(h, CALC, 2, caps=[held or observer])
        app.send(data)
        call = calc.inbox.pop()
        back = P.RemoteRef(call.payload.caps[0].import_id)
        calc.send(calc.conn.send_return(call.answer_id, Content.standalone([seg]), [back]))
        ret = app.inbox.pop()
        assert ret.error is None
        held = P.RemoteRef(ret.payload.caps[0].import_id)
    peer = router.peers[app.pid]
    deepest = 0
    for entry in peer.conn.exports.values():
        cap, n = entry.obj, 0
        while isinstance(cap, R.Wrapped):
            cap, n = cap.target, n + 1
        deepest = max(deepest, n)
    assert deepest <= 2                              # the grant's membrane and its reverse

    def call_observer():
        app.send(app.conn.send_call(held.import_id, 0xC0FFEE0000000003, 0)[1])
        if app.inbox and isinstance(app.inbox[-1], P.CallReceived):
            app.send(app.conn.send_return(app.inbox.pop().answer_id))
        return app.inbox.pop()

    assert [call_observer().error for _ in range(10)] == [None] * 10   # uses 51..60
    assert "is used up (max_uses)" in call_observer().error
    app.deliver(router.revoke("app.calc"))
    assert "was revoked" in call_observer().error


def test_audit_records_every_call_with_outcome_and_duration():
    now = [10.0]
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, audit=True, clock=lambda: now[0],
                      wall=lambda: 1e9 + now[0])
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", methods=frozenset({(CALC, 0)}))])
    h = app.grants[0].import_id
    _q, data = app.conn.send_call(h, CALC, 0)
    app.send(data)
    now[0] = 10.25
    calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
    _q, data = app.conn.send_call(h, CALC, 2)
    app.send(data)
    records = [e.record for e in calc.effects + app.effects if isinstance(e, fx.Audit)]
    assert records[0] == {"time": 1e9 + 10.0, "caller": "app", "capability": "app.calc",
                          "interface": "Calc", "method": "add", "outcome": "returned",
                          "duration_ms": 250.0}
    assert records[1]["method"] == "sumTo" and records[1]["outcome"] == "denied"
    assert "not allowed" in records[1]["reason"]


def test_quotas_on_a_grant_uses_expiry_and_rate():
    now = [0.0]
    router = R.Router({"app": None}, clock=lambda: now[0], names={CLOCK: ("Clock", {0: "wall"})})
    app = start(router, "app", [
        grant("twice", "clock", "host", max_uses=2),
        grant("brief", "clock", "host", expires_after=5),
        grant("slow", "clock", "host", calls_per_second=1)])
    twice, brief, slow = (app.grants[i].import_id for i in range(3))

    def call(h):
        app.send(app.conn.send_call(h, CLOCK, 0)[1])
        return app.inbox.pop()

    assert [call(twice).error for _ in range(2)] == [None, None]
    assert "app.twice is used up (max_uses)" in call(twice).error
    assert call(brief).error is None
    now[0] = 5.0
    assert "app.brief has expired (expires_after)" in call(brief).error
    assert call(slow).error is None
    refused = call(slow)
    assert refused.error_type == "overloaded" and "calls_per_second" in refused.error
    now[0] = 6.1
    assert call(slow).error is None




@pytest.mark.parametrize("passed", ["in params", "in a call back's answer"])
def test_what_the_holder_passed_through_a_grant_cannot_be_called_back_once_it_expired(passed):
    """A grant with expires_after: app passes its observer to calc through it (in
    the params of sumTo, or in its answer to calc's call back on another
    observer).  Once the grant expired, app's own calls through it were denied, but
    calc called the observer back for ever after: the grant's reverse membrane,
    which revocation cuts, knew nothing of the expiry.  Now it expires with the
    grant, as it is revoked with it."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                      names={**NAMES, OBSERVER: ("Observer", {0: "step"})})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", expires_after=5)])
    first, observer = object(), object()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 2, caps=[first])[1])
    held = calc.inbox.pop().payload.caps[0].import_id
    if passed != "in params":
        calc.send(calc.conn.send_call(held, OBSERVER, 0)[1])
        step = app.inbox.pop()
        seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
        app.send(app.conn.send_return(step.answer_id, Content.standalone([seg]), [observer]))
        held = calc.inbox.pop().payload.caps[0].import_id
    target = first if passed == "in params" else observer

    def call_back():
        calc.send(calc.conn.send_call(held, OBSERVER, 0)[1])
        got = [e for e in app.inbox if isinstance(e, P.CallReceived)]
        app.inbox[:] = [e for e in app.inbox if not isinstance(e, P.CallReceived)]
        if got:
            assert got[-1].target is target
            app.send(app.conn.send_return(got[-1].answer_id))
        return calc.inbox.pop()

    now[0] = 4.0
    assert call_back().error is None                      # before: it reaches app
    now[0] = 5.0
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert "app.calc has expired (expires_after)" in app.inbox.pop().error
    ret = call_back()                                     # after: it does not
    assert ret.error is not None, "calc called app's observer after the grant expired"
    assert re.fullmatch(r"denied: app object #\d+ \(passed through app\.calc\) has "
                        r"expired \(expires_after\)", ret.error), ret.error


# ------------------------------------------------------------------ the choke point


STORE = 0xC0FFEE0000000009


@pytest.mark.parametrize("refusal", ["allow", "max_uses", "calls_per_second", "interface"])
def test_a_call_refused_past_a_grant_spends_none_of_its_quota(refusal):
    """A call crossing two grants (app's to calc, calc's to store, which calc handed
    app) spent a use and a rate token of the first when the second refused it (its
    allow-list, its own quota) or the router did (an interface store does not
    implement): nothing reached store, yet app's grant was used up by refusals.
    Only a call that reaches its callee spends: after any number of refused calls,
    max_uses 3 still allows exactly 3, and the rate its tokens."""
    router = R.Router({"calc": CALC, "store": STORE, "app": None}, clock=lambda: 0.0,
                      names={**NAMES, STORE: ("Store", {0: "get", 1: "put"})})
    store = start(router, "store", exports=True)
    inner = {"allow": dict(methods=frozenset({(STORE, 0)})), "max_uses": dict(max_uses=1),
             "calls_per_second": dict(calls_per_second=1), "interface": {}}[refusal]
    calc = start(router, "calc", [grant("store", "store", **inner)], exports=True)
    app = start(router, "app", [grant("calc", "calc", max_uses=3, calls_per_second=3)])
    h = app.grants[0].import_id
    app.send(app.conn.send_call(h, CALC, 1)[1])                    # use 1: calc hands
    call = calc.inbox.pop()                                         # app its store grant
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([seg]),
                                    [P.RemoteRef(calc.grants[0].import_id)]))
    s = app.inbox.pop().payload.caps[0].import_id
    if refusal in ("max_uses", "calls_per_second"):
        calc.send(calc.conn.send_call(calc.grants[0].import_id, STORE, 0)[1])  # spends it
        store.send(store.conn.send_return(store.inbox.pop().answer_id))
        calc.inbox.pop()
    iface, method = (0x1234, 0) if refusal == "interface" else (STORE, 1)
    for _ in range(5):
        app.send(app.conn.send_call(s, iface, method)[1])
        assert app.inbox.pop().error, refusal
    assert store.inbox == []
    for _ in range(2):                                              # uses 2 and 3
        app.send(app.conn.send_call(h, CALC, 0)[1])
        assert calc.inbox and not app.inbox, (app.inbox[-1].error if app.inbox else None)
        calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
        assert app.inbox.pop().error is None
    app.send(app.conn.send_call(h, CALC, 0)[1])
    assert "app.calc is used up (max_uses)" in app.inbox.pop().error


def test_a_call_that_never_reached_a_starting_compartment_spends_no_use():
    """A call through a grant with max_uses that waited for its callee to start, and
    ended before it was delivered (call_time, or its caller cancelling it), spent a
    use for nothing: the grant's one use went to a call nobody ran."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                      limits={"calc": R.Limits(call_time=2.0)})
    app = start(router, "app", [grant("calc", "calc", max_uses=1)])
    calc, starting = start(router, "calc", exports=True, later=True)
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    now[0] = 2.5
    app.deliver(router.expire())
    assert "did not start within" in app.inbox.pop().error
    calc.deliver(starting)
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
    assert app.inbox.pop().error is None
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert "app.calc is used up (max_uses)" in app.inbox.pop().error


@pytest.mark.parametrize("then", ["timed out", "reached"])
def test_a_grant_whose_last_use_a_waiting_call_holds_is_not_said_used_up_for_good(then):
    """max_uses = 1, and app's one use is spent by a call that waits for calc to
    start: a second call was refused E_DENIED "app.calc is used up (max_uses)", a
    refusal for good (docs/guest-abi.md), yet the use came back when the waiting call
    timed out, and a third call went through.  While a call that may give a use
    back holds it, a call past the quota is refused for now (E_OVERLOADED, try
    again); once no use can come back, used up is for good."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                      limits={"calc": R.Limits(call_time=2.0)})
    app = start(router, "app", [grant("calc", "calc", max_uses=1)])
    calc, starting = start(router, "calc", exports=True, later=True)
    h = app.grants[0].import_id
    app.send(app.conn.send_call(h, CALC, 0)[1])                    # holds the one use
    for _ in range(3):
        app.send(app.conn.send_call(h, CALC, 0)[1])
        held = app.inbox.pop()
        assert held.error_type == "overloaded", held.error
        assert not held.error.startswith("denied: ") and "app.calc" in held.error \
            and "max_uses" in held.error and "try again" in held.error, held.error
    if then == "timed out":
        now[0] = 2.5
        app.deliver(router.expire())
        assert "did not start within" in app.inbox.pop().error
        calc.deliver(starting)
        app.send(app.conn.send_call(h, CALC, 0)[1])               # the use came back
        calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
        assert app.inbox.pop().error is None
    else:
        calc.deliver(starting)
        calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
        assert app.inbox.pop().error is None
    app.send(app.conn.send_call(h, CALC, 0)[1])
    used_up = app.inbox.pop()
    assert used_up.error_type == "failed" and \
        used_up.error == "denied: app.calc is used up (max_uses)", used_up.error
    assert calc.inbox == [] and not router._spent

INJECTION_POINTS = [
    ("supervisor.router.Router._on_call", "a call"),
    ("supervisor.router.Router._deliver", "a call"),
    ("supervisor.membrane.Membrane.admit", "a call through a membrane"),
    ("supervisor.router.Router.forward_returned", "a return"),
    ("capnp_schemas.protocol.Connection.receive_iter", "any message"),
]


@pytest.mark.parametrize("where,_what", INJECTION_POINTS)
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError(7), ValueError("\x1b[31mred"),
                                 OverflowError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"),
                                 AttributeError("gone"), RecursionError()])
def test_any_exception_while_handling_a_peer_cuts_off_that_peer_only(monkeypatch, where, _what,
                                                                     exc):
    router = R.Router({"calc": CALC, "app": None, "evil": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    evil = start(router, "evil", [grant("calc", "calc", methods=frozenset({(CALC, 0)}))])
    app = start(router, "app", [grant("calc", "calc")])
    # evil's call is in flight when the fault strikes (so the fault can hit its return)
    _q, data = evil.conn.send_call(evil.grants[0].import_id, CALC, 0)
    module, cls, method = where.rsplit(".", 2)
    owner = getattr(__import__(module, fromlist=["x"]), cls)
    if method != "forward_returned":
        monkeypatch.setattr(owner, method, _raiser(exc))
        effects = router.receive(evil.pid, data)
        victim = evil
    else:
        evil.send(data)
        call = calc.inbox.pop()
        monkeypatch.setattr(owner, method, _raiser(exc))
        effects = router.receive(calc.pid, calc.conn.send_return(call.answer_id))
        victim = calc
    closes = [e for e in effects if isinstance(e, fx.Close)]
    assert [c.peer for c in closes] == [victim.pid]
    notice = next(e.text for e in effects if isinstance(e, fx.Notice))
    assert f"{victim.name}: " in notice and type(exc).__name__ in notice
    assert victim.pid not in router.peers
    monkeypatch.undo()
    # everyone else carries on (calc was restarted if it was the victim)
    if victim is calc:
        calc = start(router, "calc", exports=True)
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    (call,) = [c for c in calc.inbox if isinstance(c, P.CallReceived)]
    calc.send(calc.conn.send_return(call.answer_id))
    assert app.inbox[-1].error is None


@pytest.mark.parametrize("where", ["call_peer", "_wait", "_check_size"])
def test_a_fault_while_a_call_through_a_quota_is_delivered_gives_its_use_back(monkeypatch,
                                                                              where):
    """A fault (any exception) while the router delivered app's call through its grant
    with max_uses = 1, after the grant spent the use and before the call reached calc:
    app was cut off, as any fault in its input cuts it off, but the call stayed on
    the router's books (_spent, _through, the membrane's calls in flight): the use
    never came back, and app, restarted, was told its grant was used up "for now"
    for ever.  What a lost peer's calls hold on their way is given back."""
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc, starting = start(router, "calc", exports=True, later=True)
    if where != "_wait":
        calc.deliver(starting)                      # (_wait: calc is still starting)
    app = start(router, "app", [grant("calc", "calc", max_uses=1, revocable=True)])
    real = getattr(R.Router, where)
    armed = [True]

    def fault(self, *args, **kw):
        if armed[0] and (where != "call_peer" or isinstance(args[-1], R.control.Forward)):
            armed[0] = False
            raise RuntimeError("boom")
        return real(self, *args, **kw)
    monkeypatch.setattr(R.Router, where, fault)
    effects = router.receive(app.pid, app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert not armed[0] and [e.peer for e in effects if isinstance(e, fx.Close)] == [app.pid]
    monkeypatch.undo()
    assert not router._spent and not router._through and calc.inbox == []
    assert not router.membranes["app.calc"].inflight
    if where == "_wait":
        calc.deliver(starting)
    app = start(router, "app", [grant("calc", "calc", max_uses=1, revocable=True)])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
    assert app.inbox.pop().error is None
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert app.inbox.pop().error == "denied: app.calc is used up (max_uses)"


def _raiser(exc):
    def raise_it(*_args, **_kw):
        raise exc
    return raise_it


def test_an_engine_answering_start_with_garbage_fails_to_start_and_nothing_else():
    router = R.Router({"calc": CALC, "app": None})
    e = FakeEngine.__new__(FakeEngine)
    e.router, e.name, e.exports = router, "calc", True
    e.conn, e.control = P.Connection("calc"), object()
    e.grants, e.inbox, e.effects, e.host_calls, e.answer_hosts = {}, [], [], [], False
    e.pid, effects = router.add_engine("calc", [])
    FakeEngine.all[e.pid] = e
    # bootstrap answered, then start() answered with a struct pointer past its segment
    (boot,) = [x for x in effects if isinstance(x, fx.Send)]
    (ev,) = e.conn.receive(boot.data)
    effects = router.receive(e.pid, e.conn.send_return(ev.answer_id, Content.capability(0),
                                                       [e.control]))
    (call,) = [ev for x in effects if isinstance(x, fx.Send) for ev in e.conn.receive(x.data)
               if isinstance(ev, P.CallReceived)]
    # StartResults whose `main` holds a list where a capability belongs
    bad = struct.pack("<QQQ", (1 << 32) | (1 << 48), 1, 1 | (2 << 32))
    effects = router.receive(e.pid, e.conn.send_return(call.answer_id,
                                                       Content.standalone([bad])))
    (failed,) = [x for x in effects if isinstance(x, fx.StartFailed)]
    assert "malformed" in failed.reason
    assert e.pid in router.peers                  # a failed start, not a protocol abort


# ------------------------------------------------------------------ host objects


def test_a_host_call_goes_out_as_an_effect_with_the_callers_size_limit():
    router = R.Router({"app": None}, limits={"app": R.Limits(message_size=4096)},
                      names={CLOCK: ("Clock", {0: "wall"})})
    app = start(router, "app", [grant("time", "clock", "host")], answer_hosts=False)
    app.send(app.conn.send_call(app.grants[0].import_id, CLOCK, 0)[1])
    (call,) = app.host_calls
    assert (call.kind, call.owner, call.served, call.max_bytes) == ("clock", "app", None, 4096)
    assert app.inbox == []                           # waits for the host layer
    app.deliver(router.host_failed(call.token, "EIO: the clock broke"))
    assert app.inbox.pop().error == "EIO: the clock broke"


def test_a_host_call_failed_by_a_revocation_is_not_run_and_its_late_answer_goes_nowhere():
    """An outside review: a host call waiting its turn (two at a time a compartment)
    still ran after its grant was revoked, and a late answer went to whatever call
    of the caller's had the failed one's id by then (an engine's ids are free once
    answered).  A revoked host call is forgotten at once: the runtime asks
    `host_call_live` before it runs a job, and its answer goes nowhere."""
    router = R.Router({"app": None}, names={CLOCK: ("Clock", {0: "wall"})})
    app = start(router, "app", [grant("time", "clock", "host", revocable=True),
                                grant("other", "clock", "host")], answer_hosts=False)
    q1, data = app.conn.send_call(app.grants[0].import_id, CLOCK, 0)
    app.send(data)
    (revoked,) = app.host_calls
    assert router.host_call_live(revoked.token)
    app.deliver(router.revoke("app.time"))
    assert "was revoked" in app.inbox.pop().error
    assert not router.host_call_live(revoked.token)
    q2, data = app.conn.send_call(app.grants[1].import_id, CLOCK, 0)   # the same id again
    app.send(data)
    assert q2 == q1
    mine = app.host_calls[-1]
    app.deliver(router.host_returned(revoked.token, Content.standalone([b"\0" * 16])))
    assert app.inbox == []                          # not an answer to the second call
    app.deliver(router.host_returned(mine.token, Content()))
    assert app.inbox.pop().payload is not None


def test_a_host_call_is_no_longer_wanted_once_its_caller_is_gone_or_cancels_it():
    """An outside review: a host call waiting its turn was still 'live' once its
    caller's engine was gone (a restart: the old incarnation's write landed after
    it) or its external caller had cancelled it with Finish."""
    names = dict(NAMES)
    names[CLOCK] = ("Clock", {0: "wall"})
    router = R.Router({"calc": CALC, "app": None}, external=("calc",), names=names)
    app = start(router, "app", [grant("time", "clock", "host")], answer_hosts=False)
    app.send(app.conn.send_call(app.grants[0].import_id, CLOCK, 0)[1])
    (gone,) = app.host_calls
    assert router.host_call_live(gone.token)
    router.stop_engine("app", "restarting")
    assert not router.host_call_live(gone.token) and not router._host_of
    # calc hands an external client its host capability; the client calls it, then
    # cancels the call
    calc = start(router, "calc", [grant("time", "clock", "host")], exports=True,
                 answer_hosts=False)
    c = client(router)
    c.answer_hosts = False
    q, data = c.conn.send_call(c.grants[0].import_id, CALC, 0)
    c.send(data)
    ev = calc.inbox.pop()
    calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                    [P.RemoteRef(calc.grants[0].import_id)]))
    host = [e for e in c.inbox if isinstance(e, P.ReturnReceived)][-1].payload.caps[0]
    c.send(c.conn.send_finish(q))
    q2, data = c.conn.send_call(host.import_id, CLOCK, 0)
    c.send(data)
    cancelled = (calc.host_calls + c.host_calls)[-1]
    assert router.host_call_live(cancelled.token)
    c.send(c.conn.send_finish(q2))
    assert not router.host_call_live(cancelled.token)


def test_an_engine_lost_while_its_call_waits_on_a_promise_it_passes_on_is_lost_cleanly():
    """An outside review: calc, holding a capability promised in app's unanswered
    call, called it passing the promise itself; when calc's engine went, sweeping
    that waiting call's capabilities dropped the promise from the dict _lose was
    iterating: RuntimeError out of stop_engine (in the runtime, out of the task
    reading the engine: every compartment down), or, on an Abort, a half-lost
    calc whose callers' calls were never answered."""
    for how in ("stopped", "aborts"):
        now = [0.0]
        router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                          limits={"calc": R.Limits(call_time=5.0)})
        calc, app, _first, _second, promised = _promise_passed(router)
        q3, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
        app.send(data)
        calc.send(calc.conn.send_call(promised, OBSERVER, 0, Content.capability(0),
                                      [P.RemoteRef(promised)])[1])
        assert len(router._waiting) == 1
        app.inbox.clear()
        if how == "stopped":
            app.deliver(router.stop_engine("calc", "restart"))
        else:
            calc.send(calc.conn.send_abort("bye"))
        app.deliver(router.expire())
        (ret,) = [ev for ev in app.inbox if isinstance(ev, P.ReturnReceived)
                  and ev.question_id == q3]
        assert "calc" in ret.error and router.proxies["calc"].target is None, ret
        # stopped for a restart, calls made from now on wait for its next start
        assert (router.proxies["calc"].error is None) == (how == "stopped")
        assert calc.pid not in router.peers and not router._waiting
        assert router.pipelined_bytes == 0


def test_objects_a_host_call_returns_carry_the_grants_membrane_and_are_released():
    DIR, FILE = hosted.BY_KIND["directory"].id, hosted.BY_KIND["file"].id
    names = {DIR: ("Directory", {0: "open"}), FILE: ("File", {0: "read", 3: "truncate"})}
    router = R.Router({"app": None}, names=names)
    allow = frozenset({(DIR, 0), (FILE, 0)})         # open, File.read
    app = start(router, "app", [grant("data", "directory", "host", methods=allow)],
                hosts={"data": "the-directory"}, answer_hosts=False)
    app.send(app.conn.send_call(app.grants[0].import_id, DIR, 0)[1])
    (call,) = app.host_calls
    assert call.served == "the-directory"
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    app.deliver(router.host_returned(call.token, Content.standalone([seg]),
                                     [("file", "the-file")]))
    f = app.inbox.pop().payload.caps[0].import_id
    app.send(app.conn.send_call(f, FILE, 3)[1])      # truncate: not allowed
    assert "app.data>Directory.open: File.truncate is not allowed" in app.inbox.pop().error
    app.send(app.conn.send_call(f, FILE, 0)[1])      # read: reaches the host layer
    assert app.host_calls[-1].served == "the-file" and app.host_calls[-1].kind == "file"
    app.deliver(router.host_returned(app.host_calls[-1].token, Content()))
    app.inbox.pop()
    app.send(app.conn.send_release(f))
    assert fx.HostRelease("file", "the-file") in app.effects
    # the grant itself is released when the compartment goes
    app.deliver(router.disconnected(app.pid, "gone"))
    assert fx.HostRelease("directory", "the-directory") in app.effects


def test_revoking_a_host_grant_releases_what_was_opened_through_it_at_once():
    """Revoked, a directory grant and the files opened through it held their host
    descriptors until the compartment released its handles or ended, which a
    compartment that keeps them never does: a revoked grant kept the revoked
    directory busy (an unmount failed) and counted to the compartment's
    descriptors.  Revocation releases them at once (no call reaches them again
    anyway), and once only: the compartment's later release sends no second."""
    DIR, FILE = hosted.BY_KIND["directory"].id, hosted.BY_KIND["file"].id
    router = R.Router({"app": None, "calc": CALC}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("data", "directory", "host", revocable=True),
                                grant("keep", "directory", "host"),
                                grant("calc", "calc", revocable=True)],
                hosts={"data": "the-directory", "keep": "kept-directory"},
                answer_hosts=False)
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    app.send(app.conn.send_call(app.grants[0].import_id, DIR, 0)[1])
    app.deliver(router.host_returned(app.host_calls[-1].token, Content.standalone([seg]),
                                     [("file", "the-file")]))
    f = app.inbox.pop().payload.caps[0].import_id
    app.send(app.conn.send_call(app.grants[1].import_id, DIR, 0)[1])
    app.deliver(router.host_returned(app.host_calls[-1].token, Content.standalone([seg]),
                                     [("file", "kept-file")]))
    app.inbox.pop()
    effects = router.revoke("app.data")
    released = [e for e in effects if isinstance(e, fx.HostRelease)]
    assert sorted(released, key=repr) == sorted(
        [fx.HostRelease("directory", "the-directory"), fx.HostRelease("file", "the-file")],
        key=repr)
    # a compartment grant's revocation releases nothing of its callee's
    assert not [e for e in router.revoke("app.calc") if isinstance(e, fx.HostRelease)]
    app.send(app.conn.send_call(f, FILE, 0)[1])
    assert app.inbox.pop().error.endswith(" was revoked")
    app.effects.clear()
    app.send(app.conn.send_release(f))
    app.send(app.conn.send_release(app.grants[0].import_id))
    assert not [e for e in app.effects if isinstance(e, fx.HostRelease)]
    app.deliver(router.disconnected(app.pid, "gone"))
    assert fx.HostRelease("directory", "kept-directory") in app.effects
    assert fx.HostRelease("file", "kept-file") in app.effects
    assert fx.HostRelease("directory", "the-directory") not in app.effects
    assert calc.pid in router.peers


def test_revoking_a_compartment_grant_leaves_the_callees_own_host_objects_open():
    """Revoking app's grant of calc released every host directory and file the
    grant's membrane wrapped, whoever they were made for: calc, holding a plain
    directory grant (no membrane of its own), handed it (and a file it opened
    through it) to app in an answer, and `wsuper revoke app.calc` closed them in
    the supervisor, so calc's own grant, never revoked, failed every later call
    ('was closed') until calc restarted.  Only a host grant's revocation releases
    host objects: those it made for that grant."""
    DIR = hosted.BY_KIND["directory"].id
    router = R.Router({"app": None, "calc": CALC}, names=NAMES)
    calc = start(router, "calc", [grant("data", "directory", "host")], exports=True,
                 hosts={"data": "calcs-directory"}, answer_hosts=False)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_call(calc.grants[0].import_id, DIR, 0)[1])
    calc.deliver(router.host_returned(calc.host_calls[-1].token, Content.standalone([seg]),
                                      [("file", "calcs-file")]))
    opened = calc.inbox.pop().payload.caps[0].import_id
    for handed in (calc.grants[0].import_id, opened):    # calc hands both to app
        app.send(app.conn.send_call(app.grants[0].import_id, CALC, 1)[1])
        calc.send(calc.conn.send_return(calc.inbox.pop().answer_id,
                                        Content.standalone([seg]), [P.RemoteRef(handed)]))
        assert app.inbox.pop().error is None
    effects = router.revoke("app.calc")
    assert not [e for e in effects if isinstance(e, fx.HostRelease)]
    calc.host_calls.clear()
    for own in (calc.grants[0].import_id, opened):       # calc's own still serve it
        calc.send(calc.conn.send_call(own, DIR, 0)[1])
    assert len(calc.host_calls) == 2 and not calc.inbox


@pytest.mark.parametrize("restart", [False, True])
def test_a_grant_revoked_while_its_holder_starts_is_released_at_once(restart):
    """A directory grant is opened for its holder's start before the engine is up,
    and wrapped in its membrane only once it is (its bootstrap answered): revoked in
    between (`wsuper revoke` during a start or a restart, as long as an engine
    takes to come up, or a slow file system to open it), the grant was wrapped in
    the revoked membrane and stayed open in the supervisor for that incarnation's
    whole life, the directory busy (no unmount) and its descriptor counted to the
    holder's, which revocation closes at once otherwise.  What a revoked host grant
    wraps is released whenever it is wrapped."""
    router = R.Router({"app": None}, names=NAMES, revocable=("app.data",))
    g = grant("data", "directory", "host", revocable=True)
    if restart:
        first = start(router, "app", [g], hosts={"data": "first-directory"})
        first.deliver(router.stop_engine("app", "restarting"))
    app, effects = start(router, "app", [g], hosts={"data": "the-directory"}, later=True)
    revoked = router.revoke("app.data")
    if restart:
        assert fx.HostRelease("directory", "first-directory") in revoked + first.effects
    app.deliver(effects)
    assert fx.HostRelease("directory", "the-directory") in app.effects
    app.effects.clear()
    app.send(app.conn.send_release(app.grants[0].import_id))
    assert not [e for e in app.effects if isinstance(e, fx.HostRelease)]   # once


def test_what_a_host_call_opens_for_a_caller_that_left_is_released():
    DIR = hosted.BY_KIND["directory"].id
    router = R.Router({"app": None})
    app = start(router, "app", [grant("data", "directory", "host")], hosts={"data": "d"},
                answer_hosts=False)
    app.send(app.conn.send_call(app.grants[0].import_id, DIR, 0)[1])
    (call,) = app.host_calls
    router.disconnected(app.pid, "gone")
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    effects = router.host_returned(call.token, Content.standalone([seg]), [("file", "late")])
    assert fx.HostRelease("file", "late") in effects


# ------------------------------------------------------------------ sizes and queues


def test_content_larger_than_the_receiver_accepts_fails_the_call_not_the_receiver():
    router = R.Router({"calc": CALC, "app": None}, limits={"calc": R.Limits(message_size=1024)})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    # (a struct of 256 data words: 2 KiB of params; it was a null pointer followed
    # by 2 KiB of nothing, which counted as params while the segments were what
    # was measured: content_bytes)
    big = Content.standalone([struct.pack("<Q", 256 << 32) + bytes(2048)])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, big)[1])
    assert calc.inbox == []
    assert "more than calc accepts (limit message_size = 1024)" in app.inbox.pop().error
    assert calc.pid in router.peers
    # segments past what calc's framing takes are refused whatever they hold
    padded = Content.standalone([struct.pack("<QQ", 1 << 48, 0)
                                 + bytes(1024 + R.HEADER_SLACK)])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, padded)[1])
    assert calc.inbox == []
    assert "more than calc accepts (limit message_size = 1024)" in app.inbox.pop().error
    assert calc.pid in router.peers


def _framed_params(size: int) -> Content:
    """Params as an engine sends what its guest framed in `size` bytes: a struct
    of data words only (the segment table, the root pointer, the struct)."""
    words = size // 8 - 2
    content = Content.standalone([struct.pack("<Q", words << 32) + b"\1" * (8 * words)])
    assert len(wire.frame(content.segments)) == size
    return content


def test_params_and_results_a_guest_may_send_reach_a_peer_of_the_same_message_size():
    """A guest's engine lets it send params (and results) of message_size bytes,
    framed; the router measured them with the Call or Return header the message
    carries in the same segment, and refused them to a callee with the same
    message_size: a guest of two compartments both at "1KiB" sending params of
    1016 bytes failed 'a message of 1112 bytes is more than calc accepts (limit
    message_size = 1024)', bytes it never sent.  What the guest may send reaches
    a peer with the same limit; content that is larger is still refused, naming
    its own size."""
    small = R.Limits(message_size=1024)
    router = R.Router({"calc": CALC, "app": None}, limits={"calc": small, "app": small})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, _framed_params(1024))[1])
    assert app.inbox == []
    (call,) = calc.inbox
    calc.inbox.clear()
    calc.send(calc.conn.send_return(call.answer_id, _framed_params(1024)))
    (ret,) = app.inbox
    app.inbox.clear()
    assert ret.payload is not None, ret.error
    # one word more than a guest of 1 KiB may send is refused, naming what it is
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, _framed_params(1040))[1])
    assert calc.inbox == []
    (ret,) = app.inbox
    app.inbox.clear()
    assert ret.payload is None
    assert "a message of 1032 bytes is more than calc accepts (limit message_size = 1024)" \
        in ret.error, ret.error
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, _framed_params(1024))[1])
    (call,) = calc.inbox
    calc.send(calc.conn.send_return(call.answer_id, _framed_params(1040)))
    (ret,) = app.inbox
    assert ret.payload is None
    assert "a message of 1032 bytes is more than app accepts (limit message_size = 1024)" \
        in ret.error, ret.error


def test_calls_to_a_peer_that_does_not_read_are_refused():
    waiting = {}
    router = R.Router({"calc": CALC, "app": None}, backlog=lambda pid: waiting.get(pid, 0))
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    waiting[calc.pid] = 2 * R.queue_soft_limit(R.Limits()) + 1
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    ret = app.inbox.pop()
    assert ret.error_type == "overloaded" and "is not reading its messages" in ret.error
    assert calc.inbox == []


def test_one_callers_large_calls_waiting_for_a_callee_do_not_get_the_others_refused():
    """An outside review: the bytes waiting for a callee were one bound for all its
    callers; one caller's large calls queued behind a long one (an engine reads
    nothing while a call runs) had every other caller's calls refused "not reading
    its messages".  Past the soft limit, a caller holding little of what waits gets
    through (up to twice the limit); the one holding it is refused."""
    waiting = {}
    router = R.Router({"calc": CALC, "app": None, "hog": None},
                      backlog=lambda pid: waiting.get(pid, 0))
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    hog = start(router, "hog", [grant("calc", "calc")])
    soft = R.queue_soft_limit(R.Limits())
    big = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(soft // 6 & ~7)])
    for _ in range(2):
        hog.send(hog.conn.send_call(hog.grants[0].import_id, CALC, 0, big)[1])
    assert len(calc.inbox) == 2 and hog.inbox == []
    waiting[calc.pid] = soft + 1               # they wait: calc reads nothing
    hog.send(hog.conn.send_call(hog.grants[0].import_id, CALC, 0, big)[1])
    ret = hog.inbox.pop()
    assert ret.error_type == "overloaded" and "is not reading its messages" in ret.error
    assert "of them hog's calls not answered yet" in ret.error
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert app.inbox == [] and len(calc.inbox) == 3      # delivered
    # twice the limit: nobody
    waiting[calc.pid] = 2 * soft + 1
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert "is not reading its messages" in app.inbox.pop().error
    assert len(calc.inbox) == 3


def test_a_client_that_reconnects_cannot_fill_a_callee_past_its_share_with_calls_it_left():
    """An outside review: past a callee's soft limit, a caller holding at most a
    quarter of it still gets through, counted from its calls not answered yet.  An
    external client that filled its quarter and closed its connection took its
    count with it (its calls cancelled, Finish queued behind them), but not their
    bytes, which still wait at the callee (an engine reads nothing while a call
    runs); connecting again it had a quarter anew, and with one connection at a
    time it filled the callee past twice the limit, where every caller, the
    compartments too, was refused 'not reading its messages'.  The bytes of gone
    clients' calls not answered yet count to every external caller's share there;
    the compartments' calls go on."""
    waiting = {}
    router = R.Router({"calc": CALC, "app": None}, external=("calc",),
                      backlog=lambda pid: waiting.get(pid, 0))
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    soft = R.queue_soft_limit(R.Limits())
    big = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(soft // 4 - 4096)])
    waiting[calc.pid] = soft + 1                 # calc runs a long call: reads nothing
    refused = None
    for i in range(8):
        c = client(router, f"c{i}")
        c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0, big)[1])
        if c.inbox:
            refused = c.inbox.pop()
            break
        waiting[calc.pid] += big.size()          # it waits at calc
        c.deliver(router.disconnected(c.pid, "closed"))
    assert refused is not None, waiting[calc.pid] - 2 * soft
    assert waiting[calc.pid] < 2 * soft
    assert refused.error_type == "overloaded" and "not reading its messages" in \
        refused.error and "external clients that are gone" in refused.error, refused.error
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert app.inbox == []                       # a compartment still gets through
    # calc answers (here: finishes) the calls left: their bytes count no more
    for ev in list(calc.inbox):
        calc.send(calc.conn.send_return(ev.answer_id))
    waiting[calc.pid] = soft + 1
    c = client(router, "again")
    small = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(1024)])
    c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0, small)[1])
    assert c.inbox == [] and not router._orphan_bytes


def test_a_call_refused_past_a_callees_soft_bound_does_not_walk_every_call_in_flight():
    """An outside review: past a callee's soft bound, each call asked how many bytes
    its caller's calls there and gone clients' calls hold, summed over every call
    forwarded anywhere in the router.  A call refused there is answered at once, so
    in_flight does not bound them: one client's stream of 40-byte calls, each
    refused, cost the supervisor's loop O(all calls in flight) apiece (1,985 open
    at a stuck compartment: 4 times a plain call; 7,681: 24 times).  The sums are
    kept as calls come and go; here no refusal may walk the questions, and the
    sums are those of the calls."""
    waiting = {}
    router = R.Router({"calc": CALC, "app": None}, external=("calc",),
                      backlog=lambda pid: waiting.get(pid, 0))
    calc = start(router, "calc", exports=True)
    soft = R.queue_soft_limit(R.Limits())
    others = [client(router, f"c{i}") for i in range(3)]
    for c in others:
        for _ in range(5):
            c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
    gone = client(router, "gone")
    left = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(4096)])
    gone.send(gone.conn.send_call(gone.grants[0].import_id, CALC, 0, left)[1])
    gone.deliver(router.disconnected(gone.pid, "closed"))
    assert router._orphan_bytes_at == {calc.pid: sum(router._orphan_bytes.values())} \
        and router._orphan_bytes_at[calc.pid] >= left.size()
    h = client(router, "h")
    big = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(soft // 4 - 8192)])
    h.send(h.conn.send_call(h.grants[0].import_id, CALC, 0, big)[1])
    assert h.inbox == []
    assert router._pending.forwarded[(calc.pid, h.pid)] >= big.size()

    class Unwalkable(type(router._pending)):
        def items(self):
            raise AssertionError("a refusal walked every call in flight")
        keys = values = __iter__ = items
    walled = Unwalkable()
    for k, v in dict.items(router._pending):
        walled[k] = v
    assert walled.forwarded == router._pending.forwarded
    router._pending = walled
    waiting[calc.pid] = soft + 1                 # calc runs a long call: reads nothing
    small = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(8192)])
    for _ in range(3):
        h.send(h.conn.send_call(h.grants[0].import_id, CALC, 0, small)[1])
        refused = h.inbox.pop()
        assert refused.error_type == "overloaded" and "not reading its messages" in \
            refused.error and "those of external clients that are gone" in \
            refused.error, refused.error
    # the sums follow the calls: answered, cancelled and lost ones count no more
    waiting[calc.pid] = 0
    for ev in list(calc.inbox):
        calc.send(calc.conn.send_return(ev.answer_id))
    assert router._pending.forwarded == {} and router._orphan_bytes_at == {}


def test_calls_that_waited_for_a_start_go_to_it_within_its_bounds_not_all_at_once():
    """An outside review: the bytes waiting for a peer were checked against its soft
    bound as each call went, but they are written once the router's whole answer
    is performed: calls sent in one go (those that waited for a compartment to
    start or restart, all sent when it is ready) all saw the backlog as it was
    before any of them.  Two clients that queued 15 calls of 1 MiB each on a
    compartment with message_size 1 MiB (soft bound 2 MiB, hard 24 MiB) while it
    started had 30 MiB sent to it at once: past its hard bound, the supervisor cut
    the engine that had just started off ('it does not read its messages'), a
    restart each time, until it failed for good.  What the router has sent and not
    handed over yet counts as waiting."""
    limits = R.Limits(message_size=1 << 20)
    router = R.Router({"calc": CALC}, external=("calc",), limits={"calc": limits},
                      backlog=lambda pid: 0)       # nothing written yet: one answer
    calc, starting = start(router, "calc", exports=True, later=True)
    soft, hard = R.queue_soft_limit(limits), R.queue_hard_limit(limits)
    big = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes((1 << 20) - 4096)])
    clients = [client(router, f"c{i}") for i in range(2)]
    for c in clients:
        for _ in range(15):
            c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0, big)[1])
    assert all(c.inbox == [] for c in clients)             # they wait for calc
    sent = [0]
    feed = calc.feed

    def counted(data):
        sent[0] += len(data)
        feed(data)
    calc.feed = counted
    calc.deliver(starting)
    assert sent[0] <= 2 * soft + (1 << 20) + 65536 < hard, sent[0]
    refused = [ev for c in clients for ev in c.inbox]
    assert refused and all("not reading its messages" in ev.error for ev in refused)
    assert len(calc.inbox) + len(refused) == 30


def test_calls_waiting_for_a_compartment_to_start_end_at_call_time_or_with_their_caller():
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None, "other": None},
                      limits={"calc": R.Limits(call_time=2.0)}, clock=lambda: now[0])
    app = start(router, "app", [grant("calc", "calc")])
    other = start(router, "other", [grant("calc", "calc")])
    # calc's engine was added but never answers its bootstrap: it is still starting
    router.add_engine("calc", [])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    other.send(other.conn.send_call(other.grants[0].import_id, CALC, 0, caps=[object()])[1])
    proxy = router.proxies["calc"]
    assert len(proxy.queue) == 2 and app.inbox == []
    # the caller goes: its waiting call goes with it, and what it passed is released
    other.deliver(router.disconnected(other.pid, "gone"))
    assert [w.call.reply[0].name for w in proxy.queue] == ["app"]
    now[0] = 2.5
    app.deliver(router.expire())
    (ret,) = app.inbox
    assert ret.error_type == "overloaded" and "did not start within 2 s" in ret.error
    assert proxy.queue == [] and router.next_deadline() is None


@pytest.mark.parametrize("how", ["stopped for its restart", "died, then its restart",
                                 "failed its start", "did not start in time"])
def test_a_call_made_while_a_compartment_restarts_waits_for_its_next_start(how):
    """An outside review: a call made between a compartment's engine going and its
    restart (the restart delay, up to 10 s) failed at once, E_DISCONNECTED
    'compartment calc is gone: ...', though the docs say calls to a compartment
    that is restarting wait for it, each at most its call_time.  Since programs
    run once a compartment's first start has failed, a program's first call to it
    came in just that window and always failed so (seen with `wsuper up`: app's
    call to a compartment whose start loops got -3 8 ms after the failed start,
    not its call_time later).  What its engine had (calls running, or waiting for
    the start that failed) still fails, naming why; a call made after the restart
    is decided waits for the next incarnation, or its call_time, or a failure for
    good."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                      limits={"calc": R.Limits(call_time=2.0)})
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    if how in ("failed its start", "did not start in time"):
        calc, _starting = start(router, "calc", exports=True, later=True)
        app.send(app.conn.send_call(h, CALC, 0)[1])          # waits for this start
        if how == "failed its start":
            router.start_failed(router.engines["calc"], "wasm trap: unreachable")
            app.deliver(router._flush())
        app.deliver(router.stop_engine("calc", "it failed to start"))
    else:
        calc = start(router, "calc", exports=True)
        app.send(app.conn.send_call(h, CALC, 0)[1])          # running in calc
        assert calc.inbox
        if how.startswith("died"):
            app.deliver(router.disconnected(calc.pid, "engine exited"))
        app.deliver(router.stop_engine("calc", "engine exited"))
    (lost,) = app.inbox                         # what the old incarnation had: fails
    assert lost.error_type == "disconnected" and "calc" in lost.error, lost.error
    app.inbox.clear()
    app.send(app.conn.send_call(h, CALC, 0)[1])              # during the restart delay
    assert app.inbox == [], app.inbox[0].error
    calc = start(router, "calc", exports=True)               # the next incarnation
    (call,) = calc.inbox
    calc.send(calc.conn.send_return(call.answer_id))
    (ret,) = app.inbox
    assert ret.error is None
    # a call waiting for a restart that is not to be: its compartment failed for good
    app.inbox.clear()
    app.deliver(router.stop_engine("calc", "engine exited"))
    app.send(app.conn.send_call(h, CALC, 0)[1])
    assert app.inbox == []
    app.deliver(router.fail_compartment("calc", "3 restarts within 60 s"))
    (failed,) = app.inbox
    assert failed.error_type == "failed" and "compartment calc failed: 3 restarts" \
        in failed.error, failed.error
    # and one whose restart does not come within its call_time
    app.inbox.clear()
    router2 = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                       limits={"calc": R.Limits(call_time=2.0)})
    app2 = start(router2, "app", [grant("calc", "calc")])
    start(router2, "calc", exports=True)
    app2.deliver(router2.stop_engine("calc", "engine exited"))
    app2.send(app2.conn.send_call(app2.grants[0].import_id, CALC, 0)[1])
    assert app2.inbox == []
    now[0] += 2.5
    app2.deliver(router2.expire())
    (late,) = app2.inbox
    assert late.error_type == "overloaded" and "did not start within 2 s" in late.error


def test_a_call_that_waited_for_a_start_goes_on_only_if_its_caller_still_waits_for_it():
    """An outside review: a call waiting for its callee to (re)start was failed for
    its caller by `wsuper revoke`, yet stayed in the queue, and the callee ran it
    once it was up; so did a call its caller cancelled (Finish) while it waited.
    Now a waiting call goes on only if its caller still waits for its answer, and
    from where it stopped: its membranes are not crossed again, nor its audit
    record opened again (it named the compartment, not the grant it came by)."""
    router = R.Router({"calc": CALC, "app": None, "other": None}, names=NAMES, audit=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    other = start(router, "other", [grant("calc", "calc", revocable=True)])
    calc, starts = start(router, "calc", exports=True, later=True)
    passed = object()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, caps=[passed])[1])
    cancelled, data = other.conn.send_call(other.grants[0].import_id, CALC, 1)
    other.send(data)
    other.send(other.conn.send_finish(cancelled))
    other.send(other.conn.send_call(other.grants[0].import_id, CALC, 2)[1])
    assert len(router.proxies["calc"].queue) == 3 and calc.inbox == []
    app.deliver(router.revoke("app.calc"))
    (ret,) = [ev for ev in app.inbox if isinstance(ev, P.ReturnReceived)]
    assert "was revoked while this call was in flight" in ret.error
    calc.deliver(starts)                                  # calc is up
    (call,) = calc.inbox
    assert call.method_id == 2                            # only the call still awaited
    assert any(isinstance(ev, P.ExportReleased) for ev in app.inbox)   # `passed` let go
    calc.send(calc.conn.send_return(call.answer_id))
    records = {r["method"]: r for r in (e.record for e in other.effects + calc.effects
                                        if isinstance(e, fx.Audit))}
    assert records["sumTo"]["capability"] == "other.calc", records
    assert records["sumTo"]["outcome"] == "returned"
    assert records["newCounter"]["outcome"] == "failed"
    assert "cancelled by its caller" in records["newCounter"]["reason"]
    assert router.pipelined_bytes == 0 and not router.proxies["calc"].queue


def test_calls_waiting_for_a_start_are_bounded_in_bytes_like_pipelined_calls():
    """An outside review: calls to a compartment that is starting waited with their
    whole content, counted by nothing but in_flight: 64 calls of 8 MiB a
    connection.  They now count against the same bytes as pipelined calls: the
    call past the connection's share fails 'overloaded' at once, and the bytes
    count down when the compartment is up."""
    big = R.Limits(message_size=1 << 20)                  # 2 MiB a connection
    router = R.Router({"calc": CALC, "app": None}, limits={"app": big})
    app = start(router, "app", [grant("calc", "calc")])
    calc, starts = start(router, "calc", exports=True, later=True)
    body = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(124 << 10)])
    sent = 0
    while not app.inbox:
        app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, body)[1])
        sent += 1
    (refused,) = app.inbox
    assert refused.error_type == "overloaded" and "per connection" in refused.error
    assert 14 <= sent - 1 <= 16 and router.pipelined_bytes > (1 << 20)
    calc.deliver(starts)
    assert len(calc.inbox) == sent - 1 and router.pipelined_bytes == 0


def test_the_deadline_heap_holds_nothing_of_calls_that_went_on():
    """An outside review: each call that waited on a promise stayed in the router's
    deadline heap, with its whole content, until its call_time passed, after it
    had gone on: a client pinned ~450 MiB a second.  Entries let go of their call
    when it goes on, and the heap is pruned as it grows."""
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    body = Content.standalone([struct.pack("<QQ", 1 << 32, 0) + bytes(64 << 10)])
    for _ in range(300):
        q1, data = app.conn.send_call(h, CALC, 1)
        app.send(data)
        app.send(app.conn.send_call(h, CALC, 2, Content.capability(0),
                                    [P.ReceiverAnswer(q1, ())])[1])
        first, second = calc.inbox
        calc.inbox.clear()
        promised = second.payload.caps[0].import_id
        calc.send(calc.conn.send_call(promised, OBSERVER, 0, body)[1])     # waits
        calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [object()]))
        calc.send(calc.conn.send_return(second.answer_id))
        calc.send(calc.conn.send_release(promised))
        calc.inbox.clear()
        app.inbox.clear()
    assert all(w.call is None for _d, _n, w in router._queued)
    assert len(router._queued) <= 65 and router.pipelined_bytes == 0


def test_a_revoked_call_already_forwarded_is_cancelled_at_its_callee():
    """An outside review: a call forwarded through a grant, and queued in its busy
    callee, ran after the grant was revoked: its caller was told it failed, but
    the callee heard nothing.  Revocation now sends the callee Finish for each such
    call (an engine does not run a call finished before it began), and its late
    answer goes nowhere; calls through other grants are untouched."""
    router = R.Router({"calc": CALC, "app": None, "other": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    other = start(router, "other", [grant("calc", "calc")])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    other.send(other.conn.send_call(other.grants[0].import_id, CALC, 0)[1])
    mine, theirs = calc.inbox
    app.deliver(router.revoke("app.calc"))
    assert calc.conn.answers[mine.answer_id].finished             # cancelled at calc
    assert not calc.conn.answers[theirs.answer_id].finished
    (ret,) = app.inbox
    assert "revoked while this call was in flight" in ret.error
    calc.send(calc.conn.send_return(mine.answer_id, Content.capability(0), [object()]))
    assert app.inbox == [ret]                                     # the late answer: nowhere
    calc.send(calc.conn.send_return(theirs.answer_id))
    assert other.inbox.pop().payload is not None


def test_a_revoked_grant_stays_revoked_when_its_holder_restarts():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    app.deliver(router.revoke("app.calc"))
    app.deliver(router.disconnected(app.pid, "it trapped"))
    again = start(router, "app", [grant("calc", "calc", revocable=True)])
    again.send(again.conn.send_call(again.grants[0].import_id, CALC, 0)[1])
    assert "app.calc was revoked" in again.inbox.pop().error
    assert calc.inbox == []


def test_a_grant_revoked_before_its_holder_first_starts_is_revoked_when_it_starts():
    """An outside review: while a system started (or while a holder's first start kept
    failing), `wsuper revoke` of a grant the system file makes revocable was refused
    "no revocable grant 'app.calc' (revocable: none)": its membrane is made at the
    holder's first start.  The holder then started with the grant.  Now the
    revocation holds, and the membrane is made revoked."""
    router = R.Router({"calc": CALC, "app": None}, names=NAMES,
                      revocable=("app.calc", "app.other"))
    calc = start(router, "calc", exports=True)
    router.revoke("app.calc")
    with pytest.raises(KeyError, match=r"no revocable grant 'app\.log' \(revocable: "
                                       r"app\.calc, app\.other\)"):
        router.revoke("app.log")
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert "app.calc was revoked" in app.inbox.pop().error
    assert calc.inbox == []


def test_revoking_a_grant_revoked_already_changes_nothing():
    """Before its holder starts and after: the second revocation is no revocation
    (no Notice, no effect), and revoked_already says so; a grant that is not
    revocable, or not revoked, is not."""
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, revocable=("app.calc",))
    start(router, "calc", exports=True)
    assert not router.revoked_already("app.calc") and not router.revoked_already("app.log")
    assert any(isinstance(e, fx.Notice) for e in router.revoke("app.calc"))   # early
    assert router.revoked_already("app.calc") and router.revoke("app.calc") == []
    app = start(router, "app", [grant("calc", "calc", revocable=True),
                                grant("log", "log", "host")])
    assert router.revoked_already("app.calc") and router.revoke("app.calc") == []
    assert not router.revoked_already("app.log")
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert "app.calc was revoked" in app.inbox.pop().error


def test_calls_pipelined_on_unreturned_answers_are_bounded_in_bytes_per_peer_and_in_all():
    """Each call queued on an answer not returned yet holds its whole message: up to
    in_flight of them, 8 MiB each, was 0.5 GiB a connection.  The bytes they hold
    are bounded per peer (twice message_size, at least 1 MiB); what peers hold
    beyond the first 1 MiB each comes from a shared pool, so that the peers with a
    large message_size cannot use up every other peer's room.  The call past either
    bound fails 'overloaded' at once, and the bytes count down as the answer
    returns and the calls go on, or the peer goes."""
    big = R.Limits(message_size=1 << 20)             # 2 MiB a connection
    router = R.Router({"calc": CALC, "a": None, "b": None, "c": None},
                      limits={"a": big, "b": big, "c": big},
                      pipelined_total=(3 << 20) // 2)
    calc = start(router, "calc", exports=True)
    apps = [start(router, n, [grant("calc", "calc")]) for n in ("a", "b", "c")]
    a, b, c = apps
    body = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(124 << 10)])
    asked = {}
    for app in apps:                         # a call each that calc does not answer yet
        qid, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
        app.send(data)
        asked[app.name] = qid
    first = calc.inbox[0]
    calc.inbox.clear()

    def pipeline(app) -> tuple:
        """Calls pipelined on the app's unanswered call until one is refused."""
        n = 0
        while not app.inbox:
            app.send(app.conn.send_call((asked[app.name], ()), CALC, 0, body)[1])
            n += 1
        refused = app.inbox.pop()
        assert refused.error_type == "overloaded", refused
        return n - 1, refused.error

    queued, why = pipeline(a)                # a alone: its own bound, 2 MiB
    held_a = router.peers[a.pid].pipelined
    size = held_a // queued                  # what one call holds (its content as sent)
    assert "per connection" in why and queued == (2 << 20) // size
    assert router.pipelined_pooled == held_a - R.PIPELINED_PEER_BYTES
    queued, why = pipeline(b)                # b: its own 1 MiB, then what a left of the pool
    assert "in all" in why and "1048576 bytes each connection has to itself" in why
    assert queued == (R.PIPELINED_PEER_BYTES + router.pipelined_total
                      - (held_a - R.PIPELINED_PEER_BYTES)) // size
    assert router.pipelined_pooled <= router.pipelined_total
    # c still has its own 1 MiB, though the pool is (nearly) used up
    left = router.pipelined_total - router.pipelined_pooled
    queued, why = pipeline(c)
    assert "in all" in why
    assert queued == (R.PIPELINED_PEER_BYTES + left) // size >= R.PIPELINED_PEER_BYTES // size
    assert router.pipelined_bytes == sum(router.peers[p.pid].pipelined for p in apps)
    assert calc.inbox == []
    # a's answer returns a capability: its calls go on to it, and no longer count
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [calc.main]))
    assert len(calc.inbox) == (2 << 20) // size
    assert router.peers[a.pid].pipelined == 0
    assert router.pipelined_pooled == sum(R.pooled(router.peers[p.pid].pipelined)
                                          for p in (b, c)) > 0
    # a peer that goes takes its waiting calls' bytes with it
    router.disconnected(b.pid, "gone")
    router.disconnected(c.pid, "gone")
    assert router.pipelined_bytes == router.pipelined_pooled == 0


# ---------------------------------------------------------------- promised capabilities

OBSERVER = 0xC0FFEE0000000003


def _promise_passed(router, revocable=False):
    """app asks calc for a counter (not answered yet) and passes the counter it will
    get to calc in a second call (receiverAnswer): calc holds it at once."""
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=revocable)])
    h = app.grants[0].import_id
    q1, data = app.conn.send_call(h, CALC, 1)
    app.send(data)
    _q2, data = app.conn.send_call(h, CALC, 2, Content.capability(0), [P.ReceiverAnswer(q1, ())])
    app.send(data)
    first, second = calc.inbox
    calc.inbox.clear()
    (promised,) = second.payload.caps
    assert isinstance(promised, P.Imported)             # a capability like any other
    return calc, app, first, second, promised.import_id


def test_calls_on_a_promised_capability_wait_for_its_answer_then_go_to_it_in_order():
    router = R.Router({"calc": CALC, "app": None})
    calc, app, first, _second, promised = _promise_passed(router)
    body = Content.standalone([struct.pack("<QQ", 1 << 32, 5)])
    for i in range(3):                                   # calc calls it: they wait
        calc.send(calc.conn.send_call(promised, OBSERVER, i, body)[1])
    assert calc.inbox == [] and app.inbox == []
    assert router.pipelined_bytes > 0                    # counted like pipelined calls
    counter = object()
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [counter]))
    assert [(ev.target, ev.method_id) for ev in calc.inbox] == [(counter, 0), (counter, 1),
                                                                (counter, 2)]
    assert router.pipelined_bytes == 0
    calc.inbox.clear()
    calc.send(calc.conn.send_call(promised, OBSERVER, 7)[1])      # resolved: at once
    assert [(ev.target, ev.method_id) for ev in calc.inbox] == [(counter, 7)]


@pytest.mark.parametrize("how", ["fails", "holds none", "caller goes", "times out"])
def test_calls_on_a_promised_capability_fail_when_its_answer_cannot_give_one(how):
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0],
                      limits={"calc": R.Limits(call_time=2.0), "app": R.Limits(call_time=2.0)})
    calc, app, first, _second, promised = _promise_passed(router)
    calc.send(calc.conn.send_call(promised, OBSERVER, 0)[1])
    assert calc.inbox == []
    if how == "fails":
        calc.send(calc.conn.send_exception(first.answer_id, "no counters left"))
        said = "capability promised by a failed call: no counters left"
    elif how == "holds none":
        calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), []))
        said = "capability promised by a failed call: pipelined call"   # on no capability
    elif how == "caller goes":
        calc.deliver(router.disconnected(app.pid, "gone"))
        said = "app is gone"
    else:
        now[0] = 2.5
        calc.deliver(router.expire())
        said = "within 2 s"                 # its answer, or the call on it: both waited
    (ret,) = [ev for ev in calc.inbox if isinstance(ev, P.ReturnReceived)]
    assert ret.payload is None and said in ret.error, ret.error
    assert router.pipelined_bytes == 0
    assert not router._promises


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("how", ["fails", "holds none"])
def test_a_capability_promised_by_a_failed_call_is_broken_whenever_the_call_failed(how, when):
    """A promise passed in a call (receiverAnswer) whose answer failed, or holds no
    capability there, is a broken capability: the call that passes it is delivered,
    and calls on what it passed fail with the answer's reason and type, whether the
    answer came before the call passing it or after.  Before it came, the call was
    delivered; after, the call itself failed ('capability from a failed call'),
    where Cap'n Proto delivers it either way: one client program had two outcomes,
    by timing."""
    router = R.Router({"calc": CALC}, external=("calc",), names=NAMES)
    calc = start(router, "calc", exports=True)
    app = client(router, "app")                  # pipelines (engines never do)
    h = app.grants[0].import_id
    q1, data = app.conn.send_call(h, CALC, 1)
    app.send(data)
    (first,) = calc.inbox
    calc.inbox.clear()

    def answer():
        if how == "fails":
            calc.send(calc.conn.send_exception(first.answer_id, "no counters left",
                                               "overloaded"))
        else:
            calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), []))
        (ret,) = app.inbox
        app.inbox.clear()
        assert ret.payload is None if how == "fails" else not ret.payload.caps

    if when == "before":
        answer()
    q2, data = app.conn.send_call(h, CALC, 2, Content.capability(0),
                                  [P.ReceiverAnswer(q1, ())])
    app.send(data)
    (second,) = calc.inbox                       # delivered, with a capability
    calc.inbox.clear()
    assert app.inbox == []
    (promised,) = second.payload.caps
    assert isinstance(promised, P.Imported)
    if when == "after":
        answer()
    calc.send(calc.conn.send_call(promised.import_id, OBSERVER, 0)[1])
    (ret,) = calc.inbox
    said = "no counters left" if how == "fails" else "holds no capability"
    assert ret.payload is None and said in ret.error, ret.error
    assert ret.error.startswith("capability promised by a failed call: ")
    assert ret.error_type == ("overloaded" if how == "fails" else "failed")
    calc.inbox.clear()
    calc.send(calc.conn.send_return(second.answer_id))   # calc answers app's call
    (ret,) = app.inbox
    assert ret.question_id == q2 and ret.payload is not None
    calc.send(calc.conn.send_release(promised.import_id))  # and lets go of it
    assert not router._promises and router.pipelined_bytes == 0


def test_a_call_waiting_on_a_promise_through_a_revoked_grant_never_arrives():
    """The promise came to calc through app's revocable grant: calc's call on it
    waits, the grant is revoked (the call fails at once), and when the answer
    comes the call is not delivered after all."""
    router = R.Router({"calc": CALC, "app": None})
    calc, app, first, _second, promised = _promise_passed(router, revocable=True)
    calc.send(calc.conn.send_call(promised, OBSERVER, 0)[1])
    calc.deliver(router.revoke("app.calc"))
    (ret,) = calc.inbox
    assert "was revoked" in ret.error
    calc.inbox.clear()
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [object()]))
    assert not [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]
    assert router.pipelined_bytes == 0


def test_a_chain_of_hundreds_of_calls_waiting_on_each_others_promises_settles_without_recursion():
    """An outside review: each call waiting on a promise whose own answer was promised
    to the next: settling the root failed each in turn recursively (_settle ->
    _run_queue -> _deliver -> fail -> _settle), and at ~300 links RecursionError cut
    off an innocent peer and left waiting calls counted and in no queue, on which
    expire() then raised.  Settling is a work list now."""
    names = [f"x{i}" for i in range(5)]
    router = R.Router({"echo": CALC, **{n: None for n in names}}, names=NAMES)
    echo = start(router, "echo", exports=True)
    xs = [start(router, n, [grant("echo", "echo")]) for n in names]

    def via_echo(x, cap):
        """x passes `cap` to echo, which returns it: (echo's answer id, its import)."""
        x.send(x.conn.send_call(x.grants[0].import_id, CALC, 0, Content.capability(0),
                                [cap])[1])
        (ev,) = echo.inbox
        echo.inbox.clear()
        return ev.answer_id, ev.payload.caps[0]

    def returned_to(x, answer_id, imported):
        echo.send(echo.conn.send_return(answer_id, Content.capability(0),
                                        [P.RemoteRef(imported.import_id)]))
        (ret,) = [e for e in x.inbox if isinstance(e, P.ReturnReceived)]
        x.inbox.clear()
        return ret.payload.caps[0].import_id

    x = xs[0]
    q0, data = x.conn.send_call(x.grants[0].import_id, CALC, 1)      # never answered
    x.send(data)
    (root,) = echo.inbox
    echo.inbox.clear()
    held = returned_to(x, *via_echo(x, P.ReceiverAnswer(q0, (0,))))
    last = None
    for k, x in enumerate(xs):
        if k:                                    # the last promise, handed to the next peer
            x.send(x.conn.send_call(x.grants[0].import_id, CALC, 2)[1])
            (ev,) = echo.inbox
            echo.inbox.clear()
            held = returned_to(x, ev.answer_id, last)
        for i in range(60):                      # a call on it, whose answer is promised on
            w, data = x.conn.send_call(held, CALC, 0)
            x.send(data)
            answer_id, last = via_echo(x, P.ReceiverAnswer(w, (0,)))
            if i < 59:
                held = returned_to(x, answer_id, last)
            else:
                echo.send(echo.conn.send_return(answer_id))
                x.inbox.clear()
    assert len(router._waiting) == 300
    effects = router.receive(echo.pid, echo.conn.send_exception(root.answer_id, "no"))
    assert not [e for e in effects if isinstance(e, (fx.Notice, fx.Close))], effects
    assert not router._waiting and router.pipelined_bytes == 0
    assert all(p in router.peers for p in (e.pid for e in xs + [echo]))
    router.expire()


def test_letting_go_of_promises_costs_the_same_however_many_others_wait_on_that_answer(
        monkeypatch):
    """An outside review: the promises on one unreturned answer were a list, and each
    one let go of was looked for in it and removed from it, so a peer that kept
    thousands waiting (calls pipelined on the answer, each passing 256 capabilities
    promised by it) made every later call of 256 such capabilities compare millions
    of them: 4 ms became 130 ms of the event loop per message, and another
    compartment's call waited half a second behind a flood of them.  Counted in
    comparisons, not time: letting go of a call's promises compares at most a few
    per promise, with 5,120 others waiting on the same answer or none."""
    from supervisor import caps as C
    compared = [0]

    def eq(self, other):
        compared[0] += 1
        return self is other

    monkeypatch.setattr(C.Promised, "__eq__", eq)
    monkeypatch.setattr(C.Promised, "__hash__", object.__hash__)
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    q1, data = app.conn.send_call(h, CALC, 1)            # never answered
    app.send(data)
    (first,) = calc.inbox
    n = 128                                # (256 do not fit pycapnp's first segment)
    promised = [P.ReceiverAnswer(q1, ())] * n

    def refused_call():
        """A call passing n promises, refused on delivery: they are let go of."""
        app.inbox.clear()
        app.send(app.conn.send_call(h, 0x1234, 0, P.EMPTY, promised)[1])
        (ret,) = app.inbox
        assert "does not implement" in ret.error

    compared[0] = 0
    refused_call()
    alone = compared[0]
    for _ in range(40):                                   # each waits, holding n
        app.send(app.conn.send_call((q1, ()), CALC, 0, P.EMPTY, promised)[1])
    assert sum(map(len, router._promises.values())) == 40 * n
    compared[0] = 0
    refused_call()
    assert compared[0] <= alone + 4 * n, compared[0]
    assert sum(map(len, router._promises.values())) == 40 * n
    # and they settle when the answer comes: the waiting calls go on to what it holds
    # (as far as calc's handles limit takes what they pass; the others fail saying so)
    calc.inbox.clear()
    app.inbox.clear()
    counter = object()
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [counter]))
    assert not router._promises
    went = [ev.target for ev in calc.inbox if isinstance(ev, P.CallReceived)]
    failed = [ev.error for ev in app.inbox if isinstance(ev, P.ReturnReceived) and ev.error]
    assert went == [counter] * len(went) and len(went) + len(failed) == 40
    assert all("limit handles" in e for e in failed), failed


def test_a_promise_released_before_its_answer_is_forgotten():
    router = R.Router({"calc": CALC, "app": None})
    calc, app, first, second, promised = _promise_passed(router)
    assert router._promises
    calc.send(calc.conn.send_return(second.answer_id))        # the call's caps go with it
    calc.send(calc.conn.send_release(promised))
    assert not router._promises
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [object()]))
    (ret,) = [ev for ev in app.inbox if ev.payload is not None and ev.payload.caps]
    assert ret.payload.caps                                   # app's own answer is intact


def test_a_disembargo_on_anything_but_a_promise_come_back_to_its_sender_cuts_it_off():
    """rpc.capnp: a senderLoopback Disembargo must target a promise that resolved
    to an object the sender hosts; anything else is the sender's protocol error."""
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    q, data = app.conn.send_call(app.grants[0].import_id, CALC, 1)
    app.send(data)
    (first,) = calc.inbox
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [object()]))
    msg = P.rpc.Message.new_message()
    d = msg.init("disembargo")
    d.target.init("promisedAnswer").questionId = q     # calc's counter: not app's own
    d.context.senderLoopback = 5
    app.deliver(router.receive(app.pid, wire.frame(msg.to_segments())))
    assert app.pid not in router.peers
    assert any(isinstance(e, fx.Close) and "Disembargo" in e.reason for e in app.effects)


@pytest.mark.parametrize("through", ["nothing", "a membrane"])
def test_a_promise_that_resolves_to_itself_fails_the_calls_on_it(through):
    """calc answers app's first call with the very capability promised in it (as
    app passed it in the second call, through the grant's membrane if it has
    one): a call on it would go round for ever."""
    router = R.Router({"calc": CALC, "app": None})
    calc, app, first, _second, promised = _promise_passed(router, through == "a membrane")
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0),
                                    [P.RemoteRef(promised)]))
    calc.send(calc.conn.send_call(promised, OBSERVER, 0)[1])
    (ret,) = [ev for ev in calc.inbox if isinstance(ev, P.ReturnReceived)]
    assert ("is itself" if through == "nothing" else "resolves to itself") in ret.error, \
        ret.error


def test_a_lost_callers_forwarded_calls_are_cancelled_at_their_callee_and_late_answers_go_nowhere():
    """A caller that goes (an engine here; an external client below) leaves no work
    running for it: each call forwarded for it that its callee has not answered
    gets a Finish (rpc.capnp: Finish before Return cancels), and the callee's late
    answer, even carrying a capability, goes nowhere and is released."""
    router = R.Router({"calc": CALC, "app": None, "other": None}, names=NAMES, audit=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    other = start(router, "other", [grant("calc", "calc")])
    for _ in range(3):
        app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    other.send(other.conn.send_call(other.grants[0].import_id, CALC, 0)[1])
    *mine, theirs = calc.inbox
    calc.send(calc.conn.send_return(mine[0].answer_id))      # answered in time
    calc.inbox.clear()
    effects = router.disconnected(app.pid, "it trapped")
    records = [e.record for e in effects if isinstance(e, fx.Audit)]
    calc.deliver(effects)
    assert [calc.conn.answers[c.answer_id].finished for c in mine[1:]] == [True, True]
    assert not calc.conn.answers[theirs.answer_id].finished      # another caller's: runs on
    assert [(r["caller"], r["outcome"], r["reason"]) for r in records] == \
        [("app", "failed", "the caller is gone")] * 2
    assert [k for k, h in router._pending.items() if k[0] == calc.pid] != []   # other's only
    assert all(h.reply[0].name == "other" for k, h in router._pending.items() if k[0] == calc.pid)
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    late = object()
    calc.send(calc.conn.send_return(mine[1].answer_id, Content.standalone([seg]), [late]))
    calc.send(calc.conn.send_exception(mine[2].answer_id, "call canceled"))
    assert P.ExportReleased(late) in calc.inbox                  # released at once
    assert not [e for e in calc.effects + other.effects if isinstance(e, fx.Notice)]
    assert calc.pid in router.peers and other.inbox == []
    calc.send(calc.conn.send_return(theirs.answer_id))            # other's answer still arrives
    assert other.inbox[-1].payload is not None


def _call_on_broken(receiver, reached):
    """`reached` is one call that passed `receiver` one capability, promised by an
    answer that cannot give it (a broken capability): the Return of receiver's
    call on it, which fails without reaching anything."""
    (call,) = reached
    (cap,) = call.payload.caps
    receiver.inbox.clear()
    receiver.send(receiver.conn.send_call(cap.import_id, COUNTER, 0)[1])
    (ret,) = [e for e in receiver.inbox if isinstance(e, P.ReturnReceived)]
    assert not [e for e in receiver.inbox if isinstance(e, P.CallReceived)]
    return ret


def client(router, name="client", target="calc"):
    """An external client holding `target`'s main object (through the gateway) as grants[0]."""
    e = FakeEngine.__new__(FakeEngine)
    e.router, e.name, e.exports = router, name, False
    e.conn = P.Connection(name)
    e.control = e.main = object()
    e.grants, e.inbox, e.effects, e.host_calls = {}, [], [], []
    e.answer_hosts = True
    e.pid = router.add_external(name)
    FakeEngine.all[e.pid] = e
    qid, data = e.conn.send_bootstrap()
    e.send(data)
    gateway = e.inbox.pop().payload.caps[0].import_id
    get = hosted.GATEWAY.method("get")
    e.send(e.conn.send_call(gateway, hosted.GATEWAY.id, get.ordinal,
                            payloads.build(get.params, {"name": target})[0])[1])
    e.grants[0] = e.inbox.pop().payload.caps[0]
    return e


@pytest.mark.parametrize("how", ["called", "passed"])
def test_a_capability_let_go_of_is_not_reached_through_an_answer_that_returned_it(how):
    """An outside review: client a asked calc for a counter and kept the answer open
    (no Finish), released its import of the counter (the router let it go at calc),
    and pipelined on the answer: calc had given the counter's export id to client
    b's new counter meanwhile, and a's call on the answer (or the capability it
    passed as promised by the answer) reached b's counter: a's inc made b's 100
    into 101, live.  What an answer returned and the router let go of since is
    refused, as the peer's own objects it released are ("released"), however it is
    taken from the answer: as a call's target, or a capability passed."""
    router = R.Router({"calc": CALC}, external=("calc",), names=NAMES)
    calc = start(router, "calc", exports=True)
    a, b = client(router, "a"), client(router, "b")

    def counter_for(c):
        """c asks calc for a counter, which calc returns: (c's question, calc's object)."""
        q, data = c.conn.send_call(c.grants[0].import_id, CALC, 1)
        c.send(data)
        (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
        calc.inbox.clear()
        obj = object()
        calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0), [obj]))
        return q, obj

    qa, mine = counter_for(a)
    (ret,) = [e for e in a.inbox if isinstance(e, P.ReturnReceived)]     # a never finishes
    a.inbox.clear()
    a.send(a.conn.send_release(ret.payload.caps[0].import_id))
    assert [e.obj for e in calc.inbox if isinstance(e, P.ExportReleased)] == [mine]
    calc.inbox.clear()
    qb, theirs = counter_for(b)
    assert calc.conn.export_id(theirs) is not None        # calc's id for mine, most likely
    if how == "called":
        q, data = a.conn.send_call((qa, ()), COUNTER, 0)
    else:                                     # passed to calc, as promised by the answer
        q, data = a.conn.send_call(a.grants[0].import_id, CALC, 2, Content.capability(0),
                                   [P.ReceiverAnswer(qa, ())])
    a.send(data)
    reached = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    assert not [e for e in reached if e.target is theirs
                or any(getattr(c, "obj", None) is theirs for c in e.payload.caps)]
    if how == "passed":     # the call goes on with a broken capability: calls on it fail
        ret = _call_on_broken(calc, reached)
    else:
        (ret,) = [e for e in a.inbox if isinstance(e, P.ReturnReceived) and e.question_id == q]
    assert ret.payload is None and "released" in ret.error, ret
    assert a.pid in router.peers and b.pid in router.peers
    b.send(b.conn.send_call((qb, ()), COUNTER, 0)[1])        # b's own is b's, as before
    (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived) and e.target is theirs]


def test_calls_gone_clients_left_at_one_compartment_do_not_refuse_calls_to_another():
    """An outside review: the bound on calls of gone external clients was one for all
    compartments, so a client that sent its in_flight calls to a slow compartment
    and closed, twice, had every external call to every compartment refused.  The
    bound is per compartment: calls to the others go on; only calls to the one
    holding the cancelled calls are refused until it answers them."""
    router = R.Router({"calc": CALC, "spin": CALC}, external=("calc", "spin"),
                      external_limits=R.Limits(in_flight=2))
    calc = start(router, "calc", exports=True)
    spin = start(router, "spin", exports=True)
    for i in range(2):                               # 4 calls left at spin: its bound
        c = client(router, f"evil{i}", "spin")
        for _ in range(2):
            c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
        spin.deliver(router.disconnected(c.pid, "closed"))
    honest = client(router, "honest")
    honest.send(honest.conn.send_call(honest.grants[0].import_id, CALC, 0)[1])
    (call,) = calc.inbox                             # calc is served
    calc.send(calc.conn.send_return(call.answer_id))
    assert honest.inbox.pop().payload is not None
    to_spin = client(router, "to spin", "spin")
    to_spin.send(to_spin.conn.send_call(to_spin.grants[0].import_id, CALC, 0)[1])
    refused = to_spin.inbox.pop()                    # spin is not, until it answers
    assert refused.error_type == "overloaded" and "cancelled at spin" in refused.error
    spin.send(spin.conn.send_exception(spin.inbox[0].answer_id, "call canceled"))
    to_spin.send(to_spin.conn.send_call(to_spin.grants[0].import_id, CALC, 0)[1])
    assert to_spin.inbox == [] and len(spin.inbox) == 5


def _observer_passed_to_calc():
    """calc, and an external client that passed an observer of its own to calc in a
    sumTo calc has not answered: (router, calc, client, observer, the client's
    question, the call calc received)."""
    router = R.Router({"calc": CALC}, external=("calc",))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    observer = object()
    q, data = cl.conn.send_call(cl.grants[0].import_id, CALC, 2, Content.capability(0),
                                [observer])
    cl.send(data)
    return router, calc, cl, observer, q, calc.inbox.pop()


def test_a_clients_own_object_returned_to_it_stays_imported_until_its_finish():
    """calc hands the client's observer back in an answer and lets go of it at once;
    the client then pipelines a call on that answer.  The supervisor had released
    its import of the observer with calc's release, so the pipelined call went to
    an import it no longer held: an internal error that cut off whoever's message
    it was handling (seen under load with pycapnp: 'import id 0 is not held').
    Now the answer holds it until the client's Finish, and the call arrives."""
    router, calc, cl, observer, q, call = _observer_passed_to_calc()
    held = call.payload.caps[0].import_id
    calc.send(calc.conn.send_return(call.answer_id, Content.capability(0), [P.RemoteRef(held)]))
    calc.send(calc.conn.send_release(held))           # calc lets go of it at once
    (ret,) = cl.inbox                                  # no ExportReleased of it yet
    cl.inbox.clear()
    assert ret.payload.caps[0].obj is observer
    cl.send(cl.conn.send_call((q, ()), OBSERVER, 0)[1])   # pipelined on the answer
    (got,) = cl.inbox
    assert isinstance(got, P.CallReceived) and got.target is observer
    assert router.peers[cl.pid].alive and router.peers[calc.pid].alive
    cl.send(cl.conn.send_return(got.answer_id))
    cl.inbox.clear()
    cl.send(cl.conn.send_finish(q))                    # now it may go
    assert [type(e) for e in cl.inbox] == [P.ExportReleased]
    assert observer not in [e.obj for e in cl.conn.exports.values()]


def _finish_releasing_results(conn, question_id) -> bytes:
    """Finish with releaseResultCaps = true, as Cap'n Proto's C++ RPC sends it for a
    call it gives up before the Return (it then ignores the Return's capabilities:
    the callee is to release them itself)."""
    msg = P.rpc.Message.new_message()
    f = msg.init("finish")
    f.questionId = question_id
    f.releaseResultCaps = True
    conn.questions[question_id].finished = True
    return wire.frame(msg.to_segments())


def test_capabilities_answered_to_a_call_its_caller_gave_up_are_released():
    """A client drops its promise of calc.newCounter() before the answer (pycapnp:
    `del p`, asyncio cancel): C++ sends Finish with releaseResultCaps before the
    Return, and ignores the capabilities the Return carries.  The supervisor still
    exported the counter to the client in it, and held it, and calc's counter, until
    the connection closed: each given-up call leaked an entry of the client's
    c-list (toward its handles limit) and an object in calc.  Now the Return says
    'canceled' and the counter is released at calc at once."""
    router = R.Router({"calc": CALC}, external=("calc",))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    exports_before = len(router.peers[cl.pid].conn.exports)
    q, data = cl.conn.send_call(cl.grants[0].import_id, CALC, 1)     # newCounter
    cl.send(data)
    call = calc.inbox.pop()
    cl.send(_finish_releasing_results(cl.conn, q))                  # given up
    counter = object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([seg]), [counter]))
    (ret,) = cl.inbox
    assert ret.payload is None and ret.error == "call canceled"
    assert len(router.peers[cl.pid].conn.exports) == exports_before
    assert [e.obj for e in calc.inbox if isinstance(e, P.ExportReleased)] == [counter]
    assert router.peers[cl.pid].alive


def test_a_pipelined_call_on_an_answer_given_up_is_still_delivered_and_nothing_is_kept():
    """The same, with a call pipelined on the answer before the Finish (rpc.capnp:
    it is still delivered), and the client's own object in the answer."""
    router, calc, cl, observer, q, call = _observer_passed_to_calc()
    cl.send(cl.conn.send_call((q, ()), OBSERVER, 0)[1])     # pipelined on the answer
    cl.send(_finish_releasing_results(cl.conn, q))
    held = call.payload.caps[0].import_id
    calc.send(calc.conn.send_return(call.answer_id, Content.capability(0), [P.RemoteRef(held)]))
    calc.send(calc.conn.send_release(held))
    ret, got, released = cl.inbox            # the call went before calc's release
    assert ret.payload is None and ret.error == "call canceled"
    assert isinstance(got, P.CallReceived) and got.target is observer
    assert released == P.ExportReleased(observer)          # nothing keeps it now
    cl.send(cl.conn.send_return(got.answer_id))
    assert not router.peers[cl.pid].kept and router.peers[cl.pid].alive


def test_a_call_passing_a_broken_promise_beside_its_own_objects_holds_nothing_after():
    """A call passes the client's own object and, after it, a promise on a call that
    failed (receiverAnswer: a pipelining client races the failure), and another
    object.  The call failed when the promise's answer had failed first, and the
    supervisor kept the objects imported, referred to by nothing, until the client
    disconnected (toward its handles limit); then it let go of them at once.  Now
    the call goes on, with a broken capability in the promise's place (as when the
    answer fails after it), and once calc lets go of what it was passed, the
    client's objects are released and nothing is left."""
    router = R.Router({"calc": CALC}, external=("calc",))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    failed, data = cl.conn.send_call(cl.grants[0].import_id, 0x1234, 0)   # wrong interface
    cl.send(data)
    assert cl.inbox.pop().payload is None
    mine, also = object(), object()
    q, data = cl.conn.send_call(cl.grants[0].import_id, CALC, 2, Content.capability(0),
                                [mine, P.ReceiverAnswer(failed, ()), also])
    cl.send(data)
    (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    assert not [e for e in cl.inbox if isinstance(e, P.ReturnReceived)]
    calc.inbox.clear()
    caps = [c.import_id for c in call.payload.caps]
    calc.send(calc.conn.send_return(call.answer_id))
    for c in caps:
        calc.send(calc.conn.send_release(c))
    (ret,) = [e for e in cl.inbox if isinstance(e, P.ReturnReceived)]
    assert ret.question_id == q and ret.payload is not None
    released = [e.obj for e in cl.inbox if isinstance(e, P.ExportReleased)]
    assert sorted(map(id, released)) == sorted(map(id, (mine, also)))
    peer = router.peers[cl.pid]
    assert peer.alive and not peer.conn.imports and not peer.remotes and not router._promises


def test_a_capability_in_a_waiting_call_stays_imported_when_its_other_holder_lets_go():
    """The client passes its observer to calc in one call, and again in a call
    pipelined on an answer not returned yet (it waits in the supervisor).  calc
    lets go of the first: the supervisor released every reference the client had
    sent, the waiting call's too, so when that call went on, the observer it
    carried was gone.  The waiting call holds it now."""
    router, calc, cl, observer, _q, first = _observer_passed_to_calc()
    main = cl.grants[0].import_id
    q, data = cl.conn.send_call(main, CALC, 1)                    # newCounter: not answered
    cl.send(data)
    asked = calc.inbox.pop()
    cl.send(cl.conn.send_call((q, ()), COUNTER, 0, Content.capability(0), [observer])[1])
    assert calc.inbox == []                                       # it waits on the answer
    calc.send(calc.conn.send_release(first.payload.caps[0].import_id))
    assert not [ev for ev in cl.inbox if isinstance(ev, P.ExportReleased)]
    counter = object()
    calc.send(calc.conn.send_return(asked.answer_id, Content.capability(0), [counter]))
    (waited,) = calc.inbox
    assert waited.target is counter
    calc.send(calc.conn.send_call(waited.payload.caps[0].import_id, OBSERVER, 0)[1])
    got = [ev for ev in cl.inbox if isinstance(ev, P.CallReceived)]
    assert [ev.target for ev in got] == [observer]


def test_calls_of_gone_external_clients_are_bounded_in_all_so_reconnecting_cannot_multiply_in_flight():
    """in_flight bounds each connection; a client that sends its in_flight calls and
    closes, again and again, used to queue work without bound.  Its calls are
    cancelled now, and until their callees answer the cancellations they count
    against one bound for all external clients (orphans_limit, twice the external
    in_flight): past it, external calls fail 'overloaded' at once, naming it, until
    callees answer, are lost, or call_time passes."""
    now = [0.0]
    router = R.Router({"calc": CALC}, external=("calc",), external_limits=R.Limits(in_flight=2),
                      limits={"calc": R.Limits(call_time=5.0)}, clock=lambda: now[0])
    assert router.orphans_limit == 4
    calc = start(router, "calc", exports=True)
    honest = client(router, "honest")
    for i in range(5):                               # connect, fill in_flight, close
        c = client(router, f"evil{i}")
        for _ in range(2):
            c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
        calc.deliver(router.disconnected(c.pid, "closed"))
    assert len(calc.inbox) == 4                      # the first two clients' calls only
    assert all(calc.conn.answers[c.answer_id].finished for c in calc.inbox)
    honest.send(honest.conn.send_call(honest.grants[0].import_id, CALC, 0)[1])
    refused = honest.inbox.pop()
    assert refused.error_type == "overloaded" and "limit 4" in refused.error \
        and "external clients that are gone" in refused.error
    # calc answers one cancellation (a canceled Return, as an engine does): room again
    first = calc.inbox.pop(0)
    calc.send(calc.conn.send_exception(first.answer_id, "call canceled"))
    honest.send(honest.conn.send_call(honest.grants[0].import_id, CALC, 0)[1])
    assert honest.inbox == [] and len(calc.inbox) == 4
    calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
    assert honest.inbox.pop().payload is not None
    # the others never answer: they stop counting at call_time
    now[0] = 3.0
    for _ in range(2):
        c = client(router, "again")
        c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
        calc.deliver(router.disconnected(c.pid, "closed"))
    assert len(router._orphans) == 4
    now[0] = 6.0
    calc.deliver(router.expire())
    assert len(router._orphans) == 1                 # the newest is not past its time
    honest.send(honest.conn.send_call(honest.grants[0].import_id, CALC, 0)[1])
    assert honest.inbox == []
    # a callee that goes takes its cancellations with it
    router.disconnected(calc.pid, "killed")
    assert router._orphans == {}


# ------------------------------------------------------------ tail calls (rpc.capnp level 1)


def _tail_call(question_id, target, interface_id, method_id, content=P.EMPTY) -> bytes:
    """A Call with sendResultsTo.yourself, as Cap'n Proto's C++ RPC sends it for a
    tail call (or a call on a promise that resolved to a capability of the peer it
    came from)."""
    msg = P.rpc.Message.new_message()
    c = msg.init("call")
    c.questionId = question_id
    c.target.importedCap = target
    c.interfaceId = interface_id
    c.methodId = method_id
    c.sendResultsTo.yourself = None
    c.init("params")
    return P.Connection._with_content(msg, (0, 1), content)


def _take_from(answer_id, question_id) -> bytes:
    msg = P.rpc.Message.new_message()
    r = msg.init("return")
    r.answerId = answer_id
    r.releaseParamCaps = False
    r.takeFromOtherQuestion = question_id
    return wire.frame(msg.to_segments())


def _raw_finish(question_id) -> bytes:
    msg = P.rpc.Message.new_message()
    msg.init("finish").questionId = question_id
    return wire.frame(msg.to_segments())


def _observer_called():
    """calc calls the observer the client passed it: (router, calc, client, the
    question calc asked, the call the client received).  What the supervisor sends
    the client from then on is kept raw, in `client.raw` (its own Connection does
    not read resultsSentElsewhere: the supervisor never asks for it)."""
    router, calc, cl, observer, q, call = _observer_passed_to_calc()
    oq, data = calc.conn.send_call(call.payload.caps[0].import_id, OBSERVER, 0)
    calc.send(data)
    (got,) = cl.inbox
    cl.inbox.clear()
    cl.raw = []

    def feed(data):
        for segs in wire.Framer(512, 1 << 20).feed(data):
            msg = P.rpc.Message.from_segments(segs)
            cl.raw.append((msg.which(), msg))
    cl.feed = feed
    return router, calc, cl, oq, got


def _returns(engine, qid):
    return [e for e in engine.inbox if isinstance(e, P.ReturnReceived) and e.question_id == qid]


def test_a_tail_call_answers_the_question_it_was_taken_for():
    """Cap'n Proto's C++ RPC answers a call with a tail call to the peer it came
    from: Call with sendResultsTo.yourself, then Return with takeFromOtherQuestion
    (and Finish of the tail call at once).  The supervisor cut the client off
    ("sendResultsTo 'yourself' is not supported"); rpc.capnp puts it in level 1.
    Now the tail call goes on, the client is told resultsSentElsewhere, and its
    results answer calc's call, whether they come after the Return or before it."""
    router, calc, cl, oq, got = _observer_called()
    calc_cap = cl.grants[0].import_id
    params = Content.standalone([struct.pack("<QQ", 1 << 32, 3 | (4 << 32))])
    cl.send(_tail_call(40, calc_cap, CALC, 0, params))
    cl.send(_take_from(got.answer_id, 40) + _raw_finish(40))
    (add,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    assert add.target is calc.main and add.method_id == 0
    calc.inbox.remove(add)
    assert add.payload.content.single_segment_copy() == params.single_segment_copy()
    assert _returns(calc, oq) == []                   # not before the tail call ends
    calc.send(calc.conn.send_return(add.answer_id, Content.standalone(
        [struct.pack("<QQ", 1 << 32, 7)])))
    (ret,) = _returns(calc, oq)
    assert ret.payload is not None
    seg = wire.unframe(ret.payload.content.single_segment_copy())[0]
    assert struct.unpack_from("<Q", seg, 8)[0] == 7
    kinds = [(w, m.__getattr__("return").which() if w == "return" else None)
             for w, m in cl.raw]
    assert ("return", "resultsSentElsewhere") in kinds and ("abort", None) not in kinds
    assert router.peers[cl.pid].alive and router._tails == {}

    # the other order: the tail call (to the gateway) ends before the Return names it
    calc.inbox.clear()
    oq2, data = calc.conn.send_call(next(iter(calc.conn.imports)), OBSERVER, 0)
    calc.send(data)
    (w, second) = cl.raw[-1]
    assert w == "call"
    gateway = next(i for i in cl.conn.imports if i != calc_cap)
    cl.send(_tail_call(41, gateway, hosted.GATEWAY.id, hosted.GATEWAY.method("list").ordinal))
    assert cl.raw[-1][1].__getattr__("return").which() == "resultsSentElsewhere"
    assert _returns(calc, oq2) == []
    cl.send(_take_from(second.call.questionId, 41))
    (ret,) = _returns(calc, oq2)
    assert ret.payload is not None and ret.error is None
    assert payloads.read(hosted.GATEWAY.method("list").results, ret.payload.content,
                         1 << 16)["names"] == ["calc"]
    cl.send(_raw_finish(41))
    assert router.peers[cl.pid].alive and router._tails == {}


def test_a_tail_calls_failure_fails_the_question_it_was_taken_for():
    router, calc, cl, oq, got = _observer_called()
    gateway = next(i for i in cl.conn.imports if i != cl.grants[0].import_id)
    cl.send(_tail_call(40, gateway, 0x1234, 0) + _take_from(got.answer_id, 40))
    (ret,) = _returns(calc, oq)
    assert ret.payload is None and "Gateway.get and Gateway.list only" in ret.error
    assert router.peers[cl.pid].alive


@pytest.mark.parametrize("how", ["not a tail call", "taken twice", "unknown"])
def test_take_from_other_question_must_name_an_open_tail_call_taken_once(how):
    router, calc, cl, oq, got = _observer_called()
    gateway = next(i for i in cl.conn.imports if i != cl.grants[0].import_id)
    if how == "not a tail call":
        msg = P.rpc.Message.new_message()
        c = msg.init("call")
        c.questionId = 40
        c.target.importedCap = gateway
        c.interfaceId = hosted.GATEWAY.id
        c.methodId = hosted.GATEWAY.method("list").ordinal
        c.sendResultsTo.caller = None
        cl.send(wire.frame(msg.to_segments()))
    elif how == "taken twice":
        oq2, data = calc.conn.send_call(next(iter(calc.conn.imports)), OBSERVER, 0)
        calc.send(data)
        second = cl.raw[-1][1].call.questionId
        cl.send(_tail_call(40, gateway, hosted.GATEWAY.id, 1) + _take_from(second, 40))
    cl.send(_take_from(got.answer_id, 40))
    assert cl.raw[-1][0] == "abort"
    assert "takeFromOtherQuestion names question 40" in cl.raw[-1][1].abort.reason
    assert cl.pid not in router.peers
    (ret,) = _returns(calc, oq)                       # calc's question fails: the peer is gone
    assert ret.payload is None and ret.error_type == "disconnected"
    assert router._tails == {}


def test_a_tail_calls_results_nobody_took_are_let_go_at_its_finish():
    """A peer that makes tail calls and never names them in a Return: their results
    are held (counted against the unfinished answers and their bytes) until its
    Finish, then let go of."""
    router, calc, cl, oq, got = _observer_called()
    gateway = next(i for i in cl.conn.imports if i != cl.grants[0].import_id)
    get = hosted.GATEWAY.method("get")
    content = payloads.build(get.params, {"name": "calc"})[0]
    cl.send(_tail_call(40, gateway, hosted.GATEWAY.id, get.ordinal, content))
    proxy = router.proxies["calc"]
    held = proxy.refs
    assert list(router._tails) == [(cl.pid, 40)]
    cl.send(_raw_finish(40))
    assert router._tails == {} and proxy.refs == held - 1
    assert router.peers[cl.pid].alive


def test_a_tail_call_taken_for_a_question_that_timed_out_goes_nowhere():
    """calc's call to the client timed out (the supervisor sent Finish); the client
    then answers it with a tail call: the tail call's outcome goes nowhere, and
    the client stays connected."""
    router, calc, cl, oq, got = _observer_called()
    now = [0.0]
    router.clock = lambda: now[0]
    gateway = next(i for i in cl.conn.imports if i != cl.grants[0].import_id)
    now[0] = 1e6
    calc.deliver(router.expire())
    (ret,) = _returns(calc, oq)
    assert ret.error_type == "overloaded"
    cl.send(_tail_call(40, gateway, hosted.GATEWAY.id, 1) + _take_from(got.answer_id, 40))
    cl.send(_raw_finish(40))
    assert [w for w, _m in cl.raw].count("abort") == 0
    assert router.peers[cl.pid].alive and router._tails == {}
    assert len(_returns(calc, oq)) == 1


def _tail_calls_with_handles(handles):
    """calc, and a client with `handles` whose messages from the supervisor are kept
    raw in `client.raw` (its Connection does not read resultsSentElsewhere)."""
    router = R.Router({"calc": CALC}, external=("calc",),
                      external_limits=R.Limits(handles=handles))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    cl.raw = []

    def feed(data):
        for segs in wire.Framer(512, 1 << 20).feed(data):
            msg = P.rpc.Message.from_segments(segs)
            cl.raw.append((msg.which(), msg))
    cl.feed = feed
    return router, calc, cl


def _four_caps():
    return Content.standalone([struct.pack("<Q", 4 << 48)
                               + b"".join(struct.pack("<Q", wire.cap_pointer(i))
                                          for i in range(4))])


def _tail_caps_held(router):
    return sum(1 for o in router._tails.values() if isinstance(o, R._Outcome)
               for c in o.caps if c is not None)


def test_results_of_tail_calls_nobody_took_count_against_the_clients_handles():
    """A client makes tail calls (sendResultsTo.yourself) whose results hold
    capabilities and never takes them (no Return takeFromOtherQuestion) nor
    finishes them: the supervisor holds each result for it until then.  Those
    capabilities were held past its `handles` limit, which bounds what a return
    may give it: 20 such calls of 4 new objects each kept 80 of calc's objects
    imported (and, live, 4,000 tail calls to an echo passed 16 promises each grew
    the supervisor by 17 MB; 4,096 unfinished answers of 256 capabilities each
    would hold a million).  They count against `handles` now, with what it holds:
    a tail call whose results would pass it fails with the limit, as a return
    does, and its capabilities are let go of at once."""
    router, calc, cl = _tail_calls_with_handles(8)
    four = _four_caps()
    calc_peer = router.peers[calc.pid]
    before = len(calc_peer.conn.imports)             # its main object and control
    for i in range(20):
        cl.send(_tail_call(40 + i, cl.grants[0].import_id, CALC, 1))
        (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
        calc.inbox.remove(call)
        calc.send(calc.conn.send_return(call.answer_id, four, [object() for _ in range(4)]))
    kept = [o for o in router._tails.values() if isinstance(o, R._Outcome)]
    held = _tail_caps_held(router)
    assert held <= 8, held
    assert len(calc_peer.conn.imports) <= before + 8, len(calc_peer.conn.imports)
    # the ones past the limit failed with it: taken, the failure names it
    failed = [o for o in kept if o.error is not None]
    assert failed and "limit handles" in failed[0].error.reason
    assert [w for w, _m in cl.raw].count("abort") == 0 and router.peers[cl.pid].alive
    # finished, they are let go of, and new ones fit again
    for i in range(20):
        cl.send(_raw_finish(40 + i))
    assert router._tails == {} and len(calc_peer.conn.imports) == before
    cl.send(_tail_call(70, cl.grants[0].import_id, CALC, 1))
    (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.send(calc.conn.send_return(call.answer_id, four, [object() for _ in range(4)]))
    (kept,) = router._tails.values()
    assert kept.error is None and len(kept.caps) == 4


def test_tail_call_results_count_against_handles_even_when_its_c_list_has_them_too():
    """The same, with objects the client's c-list holds too: an ordinary call gets
    them exported to it, a tail call gets them again (held for it), and it releases
    its c-list's entries (Finish with releaseResultCaps).  Counting only what
    would be new to its c-list, each round held 4 more for it, without bound;
    every reference held counts."""
    router, calc, cl = _tail_calls_with_handles(8)
    four = _four_caps()
    calc_cap = cl.grants[0].import_id
    for i in range(20):
        objs = [object() for _ in range(4)]
        q, data = cl.conn.send_call(calc_cap, CALC, 1)
        cl.send(data)
        (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
        calc.inbox.remove(call)
        calc.send(calc.conn.send_return(call.answer_id, four, objs))
        assert len(cl.raw[-1][1].__getattr__("return").results.capTable) == 4
        cl.send(_tail_call(100 + i, calc_cap, CALC, 1))
        (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
        calc.inbox.remove(call)
        calc.send(calc.conn.send_return(call.answer_id, four, objs))   # the same objects
        cl.send(_raw_finish(q))                      # releaseResultCaps: let go of them
        assert len(router.peers[cl.pid].conn.exports) == 2      # the gateway and calc
    assert _tail_caps_held(router) <= 8, _tail_caps_held(router)
    assert [w for w, _m in cl.raw].count("abort") == 0 and router.peers[cl.pid].alive


def test_a_peers_long_reason_is_cut_once_not_copied_into_every_promise_it_fails():
    """A client answers, with an exception of a 400,000-character reason, a call
    that the supervisor forwarded back to it (pipelined on a promise of its own
    object), after passing 1,500 promises on that call's answer in calls that
    wait.  The reason was kept whole and copied into each promise (and each call
    and audit record that failed with it): 50 -> 624 MiB in one message, and 60
    such calls of 250 promises would have been 6 GB.  Reasons are cut where they
    are read, CallError bounds every reason, and the promises share one text."""
    from capnp_schemas.text import REASON_LIMIT
    router, calc, cl, observer, q, call = _observer_passed_to_calc()
    calc.send(calc.conn.send_return(call.answer_id, Content.capability(0),
                                    [P.RemoteRef(call.payload.caps[0].import_id)]))
    cl.inbox.clear()
    first, data = cl.conn.send_call((q, ()), OBSERVER, 0)
    cl.send(data)
    second, data = cl.conn.send_call((q, ()), OBSERVER, 0)
    cl.send(data)
    (back, _) = [e for e in cl.inbox if isinstance(e, P.CallReceived)]
    cl.inbox.clear()
    for _ in range(10):               # calls waiting on `second`, holding promises on `first`
        cl.send(cl.conn.send_call((second, (0,)), OBSERVER, 0, P.EMPTY,
                                  [P.ReceiverAnswer(first, ())] * 150)[1])
    promised = [c for _t, waiting in router._pipelined[(cl.pid, second)] for c in waiting.caps]
    assert len(promised) == 1500
    msg = P.rpc.Message.new_message()
    r = msg.init("return")
    r.answerId = back.answer_id
    r.releaseParamCaps = False
    r.init("exception").reason = "x" * 400_000
    cl.conn.answers[back.answer_id].returned = True
    cl.send(wire.frame(msg.to_segments()))
    (failed,) = [e for e in cl.inbox if isinstance(e, P.ReturnReceived)]
    assert failed.question_id == first and len(failed.error) <= REASON_LIMIT + 100
    assert all(p.error is not None and len(p.error) < REASON_LIMIT + 200 for p in promised)
    assert len({id(p.error) for p in promised}) == 1
    assert router.peers[cl.pid].alive


def test_call_errors_and_audit_records_bound_every_reason():
    from capnp_schemas.text import REASON_LIMIT
    from supervisor.caps import CallError
    from supervisor.membrane import AuditTrail, Names
    assert len(CallError("y" * 100_000).reason) <= REASON_LIMIT + 150
    trail = AuditTrail(Names({}), True)
    caller = R.Peer(1, "client", "external", R.Limits())
    key = (caller, 1)
    trail.open(key, R.Proxy("calc", CALC), R.Call(CALC, 0, Content(), (), key), 0.0, 0.0)
    assert len(trail.close(key, "failed", 0.0, "z" * 100_000)["reason"]) <= REASON_LIMIT + 150


def test_calls_pipelined_on_a_failed_answer_fail_with_its_exception_type():
    """A call pipelined on an answer that failed fails as a broken promise does in
    Cap'n Proto: with the same exception type.  It was always 'failed' when the
    answer had failed by the time the pipelined call was read (a call refused at
    once: unimplemented, overloaded), and pycapnp clients, which retry on
    OVERLOADED and DISCONNECTED, saw FAILED."""
    router = R.Router({"calc": CALC}, external=("calc",))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    calc_cap = cl.grants[0].import_id
    q, first = cl.conn.send_call(calc_cap, 0x1234, 0)          # not calc's interface
    q2, pipelined = cl.conn.send_call((q, (0,)), CALC, 0)
    q3, passing = cl.conn.send_call(calc_cap, CALC, 2, Content.capability(0),
                                    [P.ReceiverAnswer(q, (0,))])
    cl.send(first + pipelined + passing)
    types = {r.question_id: r.error_type for r in cl.inbox if isinstance(r, P.ReturnReceived)}
    assert types == {q: "unimplemented", q2: "unimplemented"}
    # the promise passed is a broken capability: calls on it fail with that type too
    ret = _call_on_broken(calc, [e for e in calc.inbox if isinstance(e, P.CallReceived)])
    assert ret.error_type == "unimplemented" and "does not implement" in ret.error


def test_a_question_answered_by_a_tail_call_still_ends_at_its_own_deadline():
    """The question a tail call answers waits for that call, but no longer than
    its own call_time: taken out of the deadlines, a client could answer each
    call calc made to it with a tail call whose own call lasts call_time, and so
    on, holding calc's frame in_flight times call_time instead of call_time."""
    now = [0.0]
    router, calc, cl, oq, got = _observer_called()
    router.clock = lambda: now[0]
    # calc's question was asked at 0 (under the clock the harness had): restart it
    calc.inbox.clear()
    router._pending[(cl.pid, got.answer_id)].deadline = 30.0
    import heapq
    heapq.heappush(router._deadlines, (30.0, cl.pid, got.answer_id))
    now[0] = 20.0
    cl.send(_tail_call(40, cl.grants[0].import_id, CALC, 0,
                       Content.standalone([struct.pack("<QQ", 1 << 32, 1)])))
    cl.send(_take_from(got.answer_id, 40) + _raw_finish(40))
    (add,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.inbox.remove(add)
    now[0] = 31.0                                   # calc's question is due, the tail call not
    calc.deliver(router.expire())
    (ret,) = _returns(calc, oq)
    assert ret.payload is None and "did not answer within" in ret.error
    calc.send(calc.conn.send_return(add.answer_id))   # the tail call ends: its outcome goes nowhere
    assert len(_returns(calc, oq)) == 1
    assert router._tails == {} and router.peers[cl.pid].alive
    finishes = [m.finish.questionId for w, m in cl.raw if w == "finish"]
    assert finishes.count(got.answer_id) == 1


def _reads_elsewhere(engine):
    """`engine` takes resultsSentElsewhere (answering its tail calls) into
    `engine.elsewhere`; its Connection does not read it."""
    engine.elsewhere = []
    real = engine.feed

    def feed(data):
        for segs in wire.Framer(512, 1 << 20).feed(data):
            msg = P.rpc.Message.from_segments(segs)
            if msg.which() == "return" \
                    and msg.__getattr__("return").which() == "resultsSentElsewhere":
                engine.elsewhere.append(msg.__getattr__("return").answerId)
            else:
                real(wire.frame(segs))
    engine.feed = feed
    return engine


def test_a_cancelled_call_answered_late_by_a_tail_call_no_longer_counts_as_an_orphan():
    """A client's call to calc, cancelled when the client left, counts against
    orphans_limit until calc answers it (or call_time passes).  An answer with
    takeFromOtherQuestion ended the question (its id free for the next call) but
    not its count: once the id was reused, the count outlived everything (the
    next cancellation of that id counted it again, and its deadline was skipped as
    that of a live call), so a callee answering cancelled calls with tail calls
    pushed the orphan count of its compartment up for good, past orphans_limit:
    every client's calls to it refused, and the fast lane off for all of them."""
    router = R.Router({"calc": CALC, "store": CALC}, external=("calc",), orphans_limit=1000)
    start(router, "store", exports=True)
    calc = start(router, "calc", [grant("store", "store")], exports=True)
    for i in range(3):
        x = client(router, f"x{i}")
        x.send(x.conn.send_call(x.grants[0].import_id, CALC, 0)[1])
        (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
        calc.inbox.clear()
        calc.deliver(router.disconnected(x.pid, "gone"))    # calc gets Finish: an orphan
        assert calc.conn.answers[call.answer_id].finished
        assert router._orphans_at == {calc.pid: 1}
        a = calc.conn._answer_for_return(call.answer_id)    # calc answers it, late, with
        calc.conn._answer_done(call.answer_id, a)           # a tail call to store
        tail = 100 + i
        calc.send(_tail_call(tail, calc.grants[0].import_id, CALC, 0)
                  + _take_from(call.answer_id, tail) + _raw_finish(tail))
        assert router._orphans == {} and router._orphans_at == {}
    assert router.peers[calc.pid].alive


def test_a_call_whose_answer_waits_on_a_tail_call_is_no_orphan_when_its_caller_goes():
    """calc answers a client's call with takeFromOtherQuestion naming a tail call
    still running; the client then leaves.  The call was cancelled (Finish) and
    counted as an orphan awaiting calc's Return, but that Return had come: the
    Finish let go of the question, whose id the next call took, and the count
    stayed (its deadline skipped as that of the live call holding the id), for
    good once the reused id was cancelled again."""
    router = R.Router({"calc": CALC, "store": CALC}, external=("calc",), orphans_limit=1000)
    store = start(router, "store", exports=True)
    calc = _reads_elsewhere(start(router, "calc", [grant("store", "store")], exports=True))
    now = [0.0]
    router.clock = lambda: now[0]
    for i in range(3):
        x = client(router, f"x{i}")
        x.send(x.conn.send_call(x.grants[0].import_id, CALC, 0)[1])
        (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
        calc.inbox.clear()
        tail = 100 + i
        calc.send(_tail_call(tail, calc.grants[0].import_id, CALC, 0)
                  + _take_from(call.answer_id, tail) + _raw_finish(tail))
        a = calc.conn._answer_for_return(call.answer_id)
        calc.conn._answer_done(call.answer_id, a)
        calc.deliver(router.disconnected(x.pid, "gone"))     # Finish: the question ends
        assert call.answer_id not in calc.conn.answers
        assert router._orphans == {} and router._orphans_at == {}
    y = client(router, "y")                          # a live call takes the id; time passes
    y.send(y.conn.send_call(y.grants[0].import_id, CALC, 0)[1])
    now[0] += 100
    calc.deliver(router.expire())
    assert router._orphans_at == {}
    assert len([e for e in store.inbox if isinstance(e, P.CallReceived)]) == 3
    assert sorted(calc.elsewhere) == [100, 101, 102]       # the tail calls timed out
    assert router.peers[calc.pid].alive and router._tails == {}


def test_a_long_chain_of_tail_calls_ends_without_recursion():
    """Two clients hold each other's objects (passed through calc).  a calls b's;
    b answers with a tail call to a's object, taken for that question; a answers
    the question that makes with a tail call to b's, and so on, 600 deep; the last
    one goes to calc.  calc's answer then ends every tail call of the chain, one
    handing its outcome to the next: as recursion that was a RecursionError while
    the supervisor handled calc's message, which cut calc off (a compartment
    disconnected by a client) and left the chain's records behind."""
    from fuzz.router_scenarios import send_finish, send_take, tailify, to_yourself
    depth = 300
    router = R.Router({"calc": CALC}, external=("calc",),
                      external_limits=R.Limits(in_flight=depth + 2))
    calc = start(router, "calc", exports=True)
    a, b = tailify(client(router, "a")), tailify(client(router, "b"))
    objs, held = {a.name: object(), b.name: object()}, {}
    for me, other in ((a, b), (b, a)):       # calc hands each one's object to the other
        me.send(me.conn.send_call(me.grants[0].import_id, CALC, 2, Content.capability(0),
                                  [objs[me.name]])[1])
        passed = calc.inbox[-1].payload.caps[0].import_id
        other.send(other.conn.send_call(other.grants[0].import_id, CALC, 1)[1])
        calc.send(calc.conn.send_return(calc.inbox[-1].answer_id, Content.capability(0),
                                        [P.RemoteRef(passed)]))
        held[other.name] = other.inbox[-1].payload.caps[0].import_id

    def tag(n):
        return Content.standalone([struct.pack("<QQ", 1 << 32, n)])

    root, data = a.conn.send_call(held["a"], OBSERVER, 0, tag(0))
    a.send(data)
    at, target = b, None
    for i in range(2 * depth):
        (q,) = [e for e in at.inbox if isinstance(e, P.CallReceived)
                and e.target is objs[at.name]]
        at.inbox.remove(q)
        target = held[at.name] if i < 2 * depth - 1 else at.grants[0].import_id   # calc
        tail, data = at.conn.send_call(target, CALC if i == 2 * depth - 1 else OBSERVER, 0,
                                       tag(i))
        at.send(to_yourself(data) + send_take(at.conn, q.answer_id, tail)
                + send_finish(at.conn, tail, False))
        if i < 2 * depth - 1:
            at = a if at is b else b
    assert len(router._tails) == 2 * depth
    (last,) = [e for e in calc.inbox if isinstance(e, P.CallReceived) and e.method_id == 0]
    calc.send(calc.conn.send_return(last.answer_id, tag(99)))
    notices = [x.text for e in (calc, a, b) for x in e.effects if isinstance(x, fx.Notice)]
    assert notices == []
    assert all(router.peers[e.pid].alive for e in (calc, a, b))
    (ret,) = [e for e in a.inbox if isinstance(e, P.ReturnReceived) and e.question_id == root]
    assert ret.payload is not None
    assert struct.unpack_from("<Q", wire.unframe(ret.payload.content.single_segment_copy())[0],
                              8)[0] == 99
    assert router._tails == {} and not [k for k in router._pending if k[0] != calc.pid]
    # what is left in flight: the calls that passed their objects, still at calc
    assert router.peers[a.pid].conn.unanswered == 1 == router.peers[b.pid].conn.unanswered


def test_calls_refused_before_delivery_are_audited_like_every_call():
    """The audit records every capability call.  Calls refused before they reached
    a capability (past in_flight, pipelined on a failed answer, pipelined on a
    field that holds none) left no record (a seventh review): a client could make
    any number of them unseen.  Each is recorded, failed, with its reason, naming
    what it was made on."""
    router = R.Router({"calc": CALC}, names=NAMES, audit=True, external=("calc",),
                      external_limits=R.Limits(in_flight=1))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    calc_cap = cl.grants[0].import_id
    _q, first = cl.conn.send_call(calc_cap, CALC, 0)            # calc does not answer
    _q2, second = cl.conn.send_call(calc_cap, CALC, 0)
    cl.send(first + second)                                     # past in_flight
    calc.send(calc.conn.send_exception(calc.inbox.pop().answer_id, "no"))
    q, wrong = cl.conn.send_call(calc_cap, 0x1234, 0)           # not calc's interface
    q4, pipelined = cl.conn.send_call((q, (0,)), CALC, 0)
    cl.send(wrong + pipelined)
    q5, plain = cl.conn.send_call(calc_cap, CALC, 0)
    cl.send(plain)
    calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))    # no capability in it
    cl.send(cl.conn.send_call((q5, (0,)), CALC, 0)[1])
    records = [e.record for e in calc.effects + cl.effects if isinstance(e, fx.Audit)]
    mine = [(r["capability"], r["method"], r["outcome"], r.get("reason"))
            for r in records if r["capability"] != "the gateway"]
    assert sorted(mine, key=str) == sorted([
        ("calc (main object)", "add", "failed", "no"),
        ("calc (main object)", "add", "failed",
         "client has 1 calls in flight already (limit in_flight = 1)"),
        ("calc (main object)", "0", "failed",
         "compartment calc does not implement interface 0x1234"),
        (f"the answer to client's call #{q}", "add", "failed",
         "pipelined call on a failed call: compartment calc does not implement "
         "interface 0x1234"),
        ("calc (main object)", "add", "returned", None),
        (f"the answer to client's call #{q5}", "add", "failed",
         "pipelined call on a field that holds no capability")], key=str)


def test_calls_pipelined_before_their_answer_and_refused_when_it_comes_are_audited():
    """Calls pipelined on an answer that has not come yet wait in the router; when
    it comes and they cannot go on (it failed, the field holds no capability, its
    results were sent elsewhere) they are refused there, before delivery.  Only
    those refused at once, the answer being known, were recorded; those refused
    later left no record (the audit records every capability call)."""
    router = R.Router({"calc": CALC}, names=NAMES, audit=True, external=("calc",))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    calc_cap = cl.grants[0].import_id
    q, first = cl.conn.send_call(calc_cap, CALC, 0)                 # calc fails it, later
    _q2, on_failed = cl.conn.send_call((q, (0,)), CALC, 0)
    q3, plain = cl.conn.send_call(calc_cap, CALC, 0)                # returns no capability
    _q4, on_empty = cl.conn.send_call((q3, (0,)), CALC, 0)
    cl.send(first + on_failed + plain + on_empty)
    assert len(calc.inbox) == 2                 # the pipelined ones wait in the router
    one, two = calc.inbox
    calc.send(calc.conn.send_exception(one.answer_id, "no"))
    calc.send(calc.conn.send_return(two.answer_id))
    records = [e.record for e in calc.effects + cl.effects if isinstance(e, fx.Audit)]
    mine = [(r["method"], r["outcome"], r.get("reason")) for r in records
            if r["capability"] != "the gateway"]
    assert sorted(mine, key=str) == sorted([
        ("add", "failed", "no"),
        ("add", "returned", None),
        ("add", "failed", "pipelined on a failed call: no"),
        ("add", "failed", "pipelined call on a field that holds no capability")], key=str)
    assert router.audit._open == {}


def test_calls_pipelined_by_a_caller_that_goes_before_their_answer_are_audited():
    """A client pipelines calls on one a compartment is slow to answer, then goes:
    the calls that waited in the router for that answer were swept without a
    record, so any number of calls could be made unseen, one connection at a
    time.  Each is recorded, failed, saying why."""
    router = R.Router({"calc": CALC}, names=NAMES, audit=True, external=("calc",))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    calc_cap = cl.grants[0].import_id
    q, first = cl.conn.send_call(calc_cap, CALC, 0)                 # calc holds on to it
    data = first
    for _ in range(3):
        data += cl.conn.send_call((q, (0,)), CALC, 0)[1]
    cl.send(data)
    assert len(calc.inbox) == 1
    calc.deliver(router.disconnected(cl.pid, "it closed its socket"))
    calc.send(calc.conn.send_return(calc.inbox[0].answer_id))       # late: nobody wants it
    records = [e.record for e in calc.effects + cl.effects if isinstance(e, fx.Audit)]
    mine = [(r["capability"], r["outcome"]) for r in records
            if r["capability"] != "the gateway"]
    assert sorted(mine) == sorted([("calc (main object)", "failed")]
                                  + [(f"the answer to client's call #{q}", "failed")] * 3)
    assert router.audit._open == {}


@pytest.mark.parametrize("object_id", ["calc", "gateway", ""])
def test_a_bootstrap_naming_an_object_is_refused_not_answered_with_the_gateway(object_id):
    """A client asking Bootstrap for a named object (deprecatedObjectId, as Cap'n
    Proto 0.4 clients do) was handed the Gateway as if it were that object: its
    calls then failed with the Gateway's 'unimplemented', far from the cause.  It
    gets an 'unimplemented' exception that says why, its connection goes on, and
    a plain bootstrap still gets the Gateway."""
    router = R.Router({"calc": CALC}, external=("calc",))
    start(router, "calc", exports=True)
    cl = client(router)
    qid, _plain = cl.conn.send_bootstrap()       # the client's books: a question
    msg = P.rpc.Message.new_message()
    boot = msg.init("bootstrap")
    boot.questionId = qid
    boot.deprecatedObjectId = object_id
    cl.send(wire.frame(msg.to_segments()))
    (ret,) = cl.inbox
    assert ret.payload is None and ret.error_type == "unimplemented"
    assert "deprecatedObjectId" in ret.error
    cl.inbox.clear()
    qid, data = cl.conn.send_bootstrap()
    cl.send(data)
    (ret,) = cl.inbox
    assert ret.payload is not None and len(ret.payload.caps) == 1
    assert not [e for e in cl.effects if isinstance(e, fx.Close)]


def test_a_client_serving_a_call_of_a_compartment_is_busy_until_it_answers():
    """max_connections makes room by closing a client idle for 1 s with no call of
    its own in flight.  A client that hosts an object a compartment holds (an
    observer, a subscriber) and is serving that compartment's call on it had no
    call of its own in flight, so it counted as idle, was closed while it served,
    and the compartment's call failed 'disconnected'.  It is busy (Router.serving)
    from the call to its answer, for each call it serves, and idle again after;
    a call past its call_time does not keep it busy."""
    router = R.Router({"calc": CALC}, external=("calc",), limits={"calc": R.Limits(call_time=5)})
    calc = start(router, "calc", exports=True)
    cl = client(router)
    other = client(router, "other")
    mine = object()
    _q, data = cl.conn.send_call(cl.grants[0].import_id, CALC, 2, Content(), [mine])
    cl.send(data)
    (call,) = calc.inbox
    held = call.payload.caps[0].import_id          # calc keeps the client's object
    calc.send(calc.conn.send_return(call.answer_id))
    calc.inbox.clear()
    cl.inbox.clear()
    assert cl.conn.unanswered == 0 and cl.pid not in router.serving()
    questions = []
    for _ in range(2):                             # two calls of calc on it at once
        q, data = calc.conn.send_call(held, 0xC0FFEE0000000003, 0)
        calc.send(data)
        questions.append(q)
    first, second = cl.inbox
    assert first.target is mine and cl.pid in router.serving()
    assert other.pid not in router.serving()
    cl.send(cl.conn.send_return(first.answer_id))
    assert cl.pid in router.serving()              # one still served
    cl.send(cl.conn.send_return(second.answer_id))
    assert cl.pid not in router.serving()
    # a call it never answers keeps it busy only until call_time
    q, data = calc.conn.send_call(held, 0xC0FFEE0000000003, 0)
    calc.send(data)
    assert cl.pid in router.serving()
    router.clock = lambda: 1e9
    calc.deliver(router.expire())
    assert cl.pid not in router.serving()


def _handed_back_in_a_callback(router, app, calc, handle):
    """app passes its observer to calc (sumTo); calc calls it back with a Counter of
    its own in the params.  Returns (the counter, app's import id for it)."""
    observer = object()
    app.send(app.conn.send_call(handle, CALC, 2, caps=[observer])[1])
    call = calc.inbox.pop()
    passed = call.payload.caps[0].import_id
    counter = object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_call(passed, OBSERVER, 0, Content.standalone([seg]),
                                  caps=[counter])[1])
    step = app.inbox.pop()
    assert isinstance(step, P.CallReceived) and step.target is observer
    return counter, step.payload.caps[0].import_id


@pytest.mark.parametrize("how", ["revocable", "allow", "max_uses"])
def test_what_the_callee_hands_back_in_params_of_a_callback_keeps_the_grants_attenuation(how):
    """A grant's attenuation covers everything its holder obtains through it: in
    results, and also in the params of calls back into what the holder passed
    through it (an observer, a callback).  Those came to the holder bare: a Counter
    calc handed app in Observer.step could be called after the grant was revoked,
    past an allow-list that restricts Counter, and without spending max_uses."""
    router = R.Router({"calc": CALC, "app": None},
                      names={**NAMES, OBSERVER: ("Observer", {0: "step"})})
    calc = start(router, "calc", exports=True)
    kw = {"revocable": dict(revocable=True),
          # sumTo, and Counter restricted to a method it has not: not Counter.inc
          "allow": dict(methods=frozenset({(CALC, 2), (COUNTER, 1)})),
          "max_uses": dict(max_uses=1)}[how]
    app = start(router, "app", [grant("calc", "calc", **kw)])
    counter, c = _handed_back_in_a_callback(router, app, calc, app.grants[0].import_id)
    if how == "revocable":
        app.deliver(router.revoke("app.calc"))
    app.send(app.conn.send_call(c, COUNTER, 0)[1])
    assert not any(isinstance(e, P.CallReceived) and e.target is counter for e in calc.inbox)
    error = app.inbox.pop().error
    assert {"revocable": "was revoked", "allow": "Counter.inc is not allowed",
            "max_uses": "is used up (max_uses)"}[how] in error
    assert error.startswith("denied: app.calc>Observer.step"), error    # its record too


SEALED = 0xC0FFEE00000000C1


@pytest.mark.parametrize("caller", ["a grant", "a revocable grant", "an external client"])
@pytest.mark.parametrize("way", ["params", "results"])
def test_no_capability_crosses_to_or_from_an_object_whose_schema_carries_none(caller, way):
    """A cap table is the sender's, whatever the schema says: app called secret
    (whose interface has no capability anywhere) with its own object in the
    params, or secret answered with one, and it went through.  `wsuper check
    --reach` counts such a grant as carrying nothing, and said nobody else could
    reach what app holds: an under-approximation of what the router let pass.
    A sealed main object now takes none and answers none, from any caller."""
    names = {**NAMES, SEALED: ("Sealed", {0: "add"})}
    router = R.Router({"secret": SEALED, "app": None}, external=("secret",), names=names,
                      sealed={SEALED})
    secret = start(router, "secret", exports=True)
    if caller == "an external client":
        app = client(router, target="secret")
    else:
        app = start(router, "app", [grant("secret", "secret",
                                          revocable=caller == "a revocable grant")])
    mine, theirs = object(), object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    effects = router.receive(app.pid, app.conn.send_call(
        app.grants[0].import_id, SEALED, 0, Content.standalone([seg]),
        caps=[mine] if way == "params" else [])[1])
    app.deliver(effects)
    if way == "params":
        assert secret.inbox == []                       # never reached it
        (ret,) = [e for e in app.inbox if isinstance(e, P.ReturnReceived)]
        # and app's object is let go of
        assert [e.obj for e in app.inbox if isinstance(e, P.ExportReleased)] == [mine]
        app.inbox.clear()
        error = ret.error
        assert "Sealed.add passes 1 capabilities, but Sealed carries none" in error, error
        assert error.startswith("denied: ") and any(isinstance(e, fx.Denied) for e in effects)
    else:
        call = secret.inbox.pop()
        secret.send(secret.conn.send_return(call.answer_id, Content.standalone([seg]),
                                            [theirs]))
        ret = app.inbox.pop()
        assert ret.payload is None and "answered with 1 capabilities, but Sealed carries " \
            "none" in ret.error, ret.error
        # and secret's object is let go of, not held for a caller that never got it
        assert [type(e) for e in secret.inbox] == [P.ExportReleased]
        secret.inbox.clear()
    # a call without capabilities either way still goes, and is answered
    app.send(app.conn.send_call(app.grants[0].import_id, SEALED, 0)[1])
    call = secret.inbox.pop()
    secret.send(secret.conn.send_return(call.answer_id))
    assert app.inbox.pop().payload is not None
    assert router.peers[app.pid].alive and router.peers[secret.pid].alive
    assert not router._sealed


@pytest.mark.parametrize("when", ["once started", "in its _initialize"])
@pytest.mark.parametrize("way", ["params", "results", "another interface"])
def test_a_main_object_handed_on_by_its_compartment_is_called_as_its_proxy(way, when):
    """secret (whose interface carries no capability) handed its own main object
    (wsuper.object(0)) to t across a grant that carries some: t got it as a plain
    object of secret's, and its calls on it passed none of the main object's
    checks (a capability went in, one came back; any interface id was taken),
    though it is the very object the sealed proxy serves.  Handed on from its
    _initialize, it comes before the proxy has it (start's answer).  A call on
    the main object is a call on its proxy, however the caller holds it."""
    names = {**NAMES, SEALED: ("Sealed", {0: "add"})}
    router = R.Router({"secret": SEALED, "t": CALC}, names=names, sealed={SEALED})
    t = start(router, "t", exports=True)
    secret, effects = start(router, "secret", [grant("t", "t")], exports=True, later=True)
    plain, early = secret.send, when == "in its _initialize"

    def send(data):                 # start's answer: its grants are there by now
        if early and secret.grants and not t.inbox:
            plain(secret.conn.send_call(secret.grants[0].import_id, CALC, 2,
                                        caps=[secret.main])[1])
        plain(data)
    secret.send = send
    secret.deliver(effects)
    if not early:
        secret.send(secret.conn.send_call(secret.grants[0].import_id, CALC, 2,
                                          caps=[secret.main])[1])
    (call,) = t.inbox
    t.inbox.clear()
    held = call.payload.caps[0].import_id
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    mine = object()
    t.send(t.conn.send_call(held, CALC if way == "another interface" else SEALED, 0,
                            Content.standalone([seg]) if way == "params" else P.EMPTY,
                            caps=[mine] if way == "params" else [])[1])
    if way == "results":
        (nested,) = [e for e in secret.inbox if isinstance(e, P.CallReceived)]
        assert nested.target is secret.main
        secret.send(secret.conn.send_return(nested.answer_id, Content.standalone([seg]),
                                            [object()]))
    else:
        assert not [e for e in secret.inbox if isinstance(e, P.CallReceived)]
    (ret,) = [e for e in t.inbox if isinstance(e, P.ReturnReceived)]
    assert ret.payload is None, "the call reached secret's main object unchecked"
    assert {"params": "passes 1 capabilities, but Sealed carries none",
            "results": "answered with 1 capabilities, but Sealed carries none",
            "another interface": "does not implement interface"}[way] in ret.error, ret.error
    # a call as a grant's holder makes it still goes, and is answered
    t.inbox.clear()
    secret.inbox.clear()
    t.send(t.conn.send_call(held, SEALED, 0)[1])
    (nested,) = [e for e in secret.inbox if isinstance(e, P.CallReceived)]
    secret.send(secret.conn.send_return(nested.answer_id))
    (ret,) = [e for e in t.inbox if isinstance(e, P.ReturnReceived)]
    assert ret.payload is not None
    assert router.peers[t.pid].alive and router.peers[secret.pid].alive


def test_a_call_the_audits_end_recorded_failed_is_never_carried_out_after_it():
    """A review of end_audit: at stop it records every call still open `failed`
    ('the system stopped before it was answered') and only then is `run stopped`
    written; yet the calls themselves went on.  A host call queued for its turn
    (a File's writes, one after another) still ran when its turn came, and a call
    pipelined on an answer, or waiting on a promise, was delivered once the answer
    came: carried out after the end of the run, with a record that says it failed
    and no other.  Once the audit has ended no call is delivered and no host call
    is run."""
    names = dict(NAMES)
    names[CLOCK] = ("Clock", {0: "wall"})
    router = R.Router({"calc": CALC, "app": None}, external=("calc",), names=names,
                      audit=True)
    app = start(router, "app", [grant("time", "clock", "host")], answer_hosts=False)
    calc = start(router, "calc", [grant("time", "clock", "host")], exports=True,
                 answer_hosts=False)
    c = client(router)
    c.answer_hosts = False
    app.send(app.conn.send_call(app.grants[0].import_id, CLOCK, 0)[1])
    (queued,) = app.host_calls                    # waits for its turn (a worker thread)
    q, data = c.conn.send_call(c.grants[0].import_id, CALC, 0)
    c.send(data)
    c.send(c.conn.send_call((q, ()), CLOCK, 0)[1])    # pipelined on calc's answer
    ev = calc.inbox.pop()
    assert router.host_call_live(queued.token)
    c.effects.clear()
    c.deliver(router.end_audit("the system stopped before it was answered"))
    records = [e.record for e in c.effects if isinstance(e, fx.Audit)]
    assert sorted((r["caller"], r["method"], r["outcome"]) for r in records) == \
        [("app", "wall", "failed"), ("client", "add", "failed"), ("client", "wall", "failed")]
    assert all("the system stopped before it was answered" in r["reason"] for r in records)
    # the client is told so: the call it made and the one it pipelined on it
    failed = [e for e in c.inbox if isinstance(e, P.ReturnReceived)]
    assert len(failed) == 2 and all(
        "the system stopped before it was answered" in e.error for e in failed)
    assert not router.host_call_live(queued.token)     # its turn comes: it is not run
    # calc's last answer, read after it, goes nowhere: the call failed, as recorded,
    # and nothing is delivered on what it brought
    c.inbox.clear()
    calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                    [P.RemoteRef(calc.grants[0].import_id)]))
    assert calc.host_calls == [] and c.host_calls == []
    assert not [e for e in c.inbox if isinstance(e, P.ReturnReceived)]
    # nor is a new call, through the gateway or on what it held
    c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
    assert calc.inbox == [] and "the system is stopping" in c.inbox.pop().error


@pytest.mark.parametrize("audit", [True, False])
def test_calls_waiting_for_a_start_when_the_system_stops_are_answered(audit):
    """A review of the stop: a call waiting for its callee to start (a module being
    compiled) when the system stopped was recorded failed by end_audit, but its
    caller was never told: an external client got the end of its connection, not
    an answer, and without an audit nothing ended it at all.  end_audit answers
    every waiting call, with the stop's reason, audit or not; the start that comes
    after delivers nothing."""
    router = R.Router({"calc": CALC, "app": None}, audit=audit,
                      limits={"calc": R.Limits(call_time=60.0)})
    app = start(router, "app", [grant("calc", "calc")])
    calc, starting = start(router, "calc", exports=True, later=True)
    for _ in range(2):
        app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert not app.inbox                              # they wait for calc's start
    app.effects.clear()
    app.deliver(router.end_audit("the system stopped before it was answered"))
    answers = [e for e in app.inbox if isinstance(e, P.ReturnReceived)]
    assert len(answers) == 2 and all(
        "the system stopped before it was answered" in e.error for e in answers)
    records = [e.record for e in app.effects if isinstance(e, fx.Audit)]
    assert len(records) == (2 if audit else 0) and all(
        r["outcome"] == "failed" and "the system stopped" in r["reason"] for r in records)
    calc.deliver(starting)
    assert calc.inbox == []


@pytest.mark.parametrize("how", ["called", "passed"])
def test_a_promise_let_go_of_is_not_reached_through_an_answer_that_returned_it(how):
    """A promised capability (receiverAnswer) let go of before its answer came is out
    of the promises its answer settles: reached again through an open answer that
    returned it (pipelined on, or passed as promised by that answer), it was called
    as a promise still to be settled, and the call waited, its bytes held, until its
    call_time, though the answer it waited for had returned meanwhile: nothing
    would ever settle it.  Refused at once, as a Remote let go of is ('released')."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None, "b": None}, clock=lambda: now[0],
                      limits={n: R.Limits(call_time=2.0) for n in ("calc", "app", "b")})
    calc, app, first, _second, promised = _promise_passed(router)
    b = start(router, "b", [grant("calc", "calc")])
    qb, data = b.conn.send_call(b.grants[0].import_id, CALC, 3)       # b never finishes
    b.send(data)
    (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.inbox.clear()
    calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                    [P.RemoteRef(promised)]))
    (ret,) = [e for e in b.inbox if isinstance(e, P.ReturnReceived)]
    b.inbox.clear()
    b.send(b.conn.send_release(ret.payload.caps[0].import_id))        # b lets it go
    calc.send(calc.conn.send_release(promised))                        # and so does calc
    if how == "called":
        q, data = b.conn.send_call((qb, ()), OBSERVER, 0)
    else:
        q, data = b.conn.send_call(b.grants[0].import_id, CALC, 2, Content.capability(0),
                                   [P.ReceiverAnswer(qb, ())])
    b.send(data)
    reached = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [object()]))
    if how == "passed":     # the call goes on with a broken capability: calls on it fail
        assert [e.target for e in reached] == [calc.main]
        ret = _call_on_broken(calc, reached)
    else:
        assert not reached
        (ret,) = [e for e in b.inbox if isinstance(e, P.ReturnReceived) and e.question_id == q]
    assert not [e for e in calc.inbox if isinstance(e, P.CallReceived)]   # not passed on
    assert ret.payload is None and "released" in ret.error, ret
    assert not router._waiting and router.pipelined_bytes == 0
    assert all(p in router.peers for p in (calc.pid, app.pid, b.pid))



@pytest.mark.parametrize("waits_on", ["a start", "an answer", "a promise"])
def test_a_capability_passed_in_two_waiting_calls_outlives_the_first_ones_cancel(waits_on):
    """A peer passed its own observer in two calls that waited together (on calc's
    start, pipelined on an answer, on a promise) and cancelled the first (Finish).
    When they went on, both were let go of at once, before either was handled: the
    first, cancelled, swept the observer nothing else held, the router released it
    at its peer, and the second then passed on an observer already released, whose
    calls failed ('a capability of app that was released').  What a waiting call
    passed is held until its own turn comes."""
    router = R.Router({"calc": CALC, "app": None})
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    observer = object()
    if waits_on == "a start":
        calc, starting = start(router, "calc", exports=True, later=True)
    else:
        calc = start(router, "calc", exports=True)
        q0, data = app.conn.send_call(h, CALC, 1)          # calc answers it later
        app.send(data)
        (first,) = calc.inbox
        calc.inbox.clear()
    if waits_on == "a promise":          # calc calls app's promise twice, passing its own
        calc, app = app, calc            # observer: the roles of the others swapped
        calc.send(calc.conn.send_call(h, CALC, 2, Content.capability(0),
                                      [P.ReceiverAnswer(q0, ())])[1])
        (ev,) = app.inbox
        app.inbox.clear()
        app.send(app.conn.send_return(ev.answer_id))
        target = ev.payload.caps[0].import_id
    else:
        target = h if waits_on == "a start" else (q0, ())
    qs = []
    for _ in range(2):
        q, data = app.conn.send_call(target, CALC, 0, Content.capability(0), [observer])
        app.send(data)
        qs.append(q)
    app.send(app.conn.send_finish(qs[0]))                   # the first one cancelled
    assert not [e for e in app.inbox if isinstance(e, P.ExportReleased)]
    if waits_on == "a start":
        calc.deliver(starting)
    elif waits_on == "an answer":
        calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [object()]))
    else:                       # calc (`app` here) answers app's call with its own object
        app.send(app.conn.send_return(first.answer_id, Content.capability(0), [object()]))
    receiver = app if waits_on == "a promise" else calc
    (ev,) = [e for e in receiver.inbox if isinstance(e, P.CallReceived)]   # the second
    receiver.inbox.clear()
    assert not [e for e in app.inbox if isinstance(e, P.ExportReleased)]
    (got,) = ev.payload.caps
    if isinstance(got, P.Exported):                     # its own, back: as it passed it
        assert got.obj is observer
        return
    receiver.send(receiver.conn.send_call(got.import_id, OBSERVER, 7)[1])
    (back,) = [e for e in app.inbox if isinstance(e, P.CallReceived)]
    assert back.target is observer and back.method_id == 7


@pytest.mark.parametrize("how", ["called", "passed"])
def test_a_wrapper_let_go_of_is_not_reached_through_an_answer_that_returned_it(how):
    """A review of the router's newest fixes: _held looked through a membrane's
    wrapper at what it wraps only.  App (granted calc) returned to client a the
    counter calc gave it through the grant (its wrapper); a kept the answer open,
    a and app let the wrapper go (its membrane forgot it, and what it held of
    the counter was dropped); client b still held the counter itself.  a's call
    pipelined on the answer (or the capability it passed as promised by it)
    reached the wrapper let go of: a call on it went on to the counter, and,
    passed on (to app here), it held nothing of the counter, so once b let the
    counter go, app's capability failed ('released') though it was whole when
    app got it.  A wrapper let go of is refused
    like any other capability let go of, whatever it wraps."""
    router = R.Router({"calc": CALC, "app": CALC}, external=("calc", "app"), names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)], exports=True)
    a, b = client(router, "a", target="app"), client(router, "b")
    counter = object()
    # b gets calc's counter itself
    qb, data = b.conn.send_call(b.grants[0].import_id, CALC, 1)
    b.send(data)
    (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.inbox.clear()
    calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0), [counter]))
    (ret_b,) = [e for e in b.inbox if isinstance(e, P.ReturnReceived) and e.question_id == qb]
    b.send(b.conn.send_finish(qb))
    # a asks app, which asks calc through its grant, and returns what it got (wrapped)
    qa, data = a.conn.send_call(a.grants[0].import_id, CALC, 1)
    a.send(data)
    (call_a,) = [e for e in app.inbox if isinstance(e, P.CallReceived)]
    app.inbox.clear()
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 1)
    app.send(data)
    (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.inbox.clear()
    calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0), [counter]))
    (got,) = [e for e in app.inbox if isinstance(e, P.ReturnReceived)]
    app.inbox.clear()
    wrapped = got.payload.caps[0].import_id
    app.send(app.conn.send_return(call_a.answer_id, Content.capability(0),
                                  [P.RemoteRef(wrapped)]))
    (ret,) = [e for e in a.inbox if isinstance(e, P.ReturnReceived) and e.question_id == qa]
    a.inbox.clear()                                                # a never finishes
    a.send(a.conn.send_release(ret.payload.caps[0].import_id))
    app.send(app.conn.send_release(wrapped))
    assert not [e for e in calc.inbox if isinstance(e, P.ExportReleased)]  # b holds it
    if how == "called":
        q, data = a.conn.send_call((qa, ()), CALC, 0)
    else:                                      # passed to app, as promised by the answer
        q, data = a.conn.send_call(a.grants[0].import_id, CALC, 2, Content.capability(0),
                                   [P.ReceiverAnswer(qa, ())])
    a.send(data)
    assert not [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    passed = [e for e in app.inbox if isinstance(e, P.CallReceived) and e.payload.caps]
    if how == "passed":     # the call goes on with a broken capability: calls on it fail
        ret = _call_on_broken(app, passed)
        assert not [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    else:
        assert not passed, passed
        (ret,) = [e for e in a.inbox if isinstance(e, P.ReturnReceived) and e.question_id == q]
    assert ret.payload is None and "released" in ret.error, ret
    assert a.pid in router.peers and b.pid in router.peers
    # b's counter is b's, whole, as before
    b.send(b.conn.send_call(ret_b.payload.caps[0].import_id, CALC, 0)[1])
    assert [e for e in calc.inbox if isinstance(e, P.CallReceived) and e.target is counter]


def test_capabilities_in_answers_to_the_supervisors_own_questions_are_released():
    """A taken-over engine answers the supervisor's own questions (bootstrap,
    Engine.run, and Engine.describe/collect, which a probe asks every 0.1 s) with
    capabilities no handler takes: each was imported (up to 256 an answer) and
    never released, so one engine grew the supervisor's table of its imports
    without bound.  What the handler does not keep is released at once; what it
    keeps (the Engine of bootstrap's answer) still works."""
    router = R.Router({"calc": CALC, "app": None})
    e = FakeEngine.__new__(FakeEngine)
    e.router, e.name, e.exports = router, "calc", True
    e.conn = P.Connection("calc")
    e.control, e.main = object(), object()
    e.grants, e.inbox, e.effects, e.host_calls = {}, [], [], []
    e.answer_hosts = True
    e.pid, effects = router.add_engine("calc", [], {})
    FakeEngine.all[e.pid] = e
    peer = router.peers[e.pid]
    held = []

    def feed(data):                  # bootstrap answered with two capabilities
        for ev in e.conn.receive(data):
            if isinstance(ev, P.BootstrapRequested):
                extra = object()
                held.append(extra)
                seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
                e.send(e.conn.send_return(ev.answer_id, Content.standalone([seg]),
                                          [e.control, extra]))
            elif not (isinstance(ev, P.CallReceived) and ev.method_id == 0
                      and answer_control(e, ev)):              # start
                e.inbox.append(ev)
    e.feed = feed
    e.deliver(effects)
    assert fx.Started("calc", True) in e.effects         # the Engine it kept works
    assert P.ExportReleased(held[0]) in e.inbox           # the other is let go of
    kept = len(peer.conn.imports)

    class Handler:
        def returned(self, router, peer, ev):
            self.ev = ev

        def lost(self, router, peer, reason):
            pass

    for method in (1, 2, 4):                              # run, describe, collect
        h = Handler()
        e.inbox.clear()
        e.deliver(router.engine_call("calc", method, P.EMPTY, h))
        (call,) = [ev for ev in e.inbox if isinstance(ev, P.CallReceived)]
        e.inbox.clear()
        objs = [object() for _ in range(P.MAX_CAPS_PER_MESSAGE)]
        e.send(e.conn.send_return(call.answer_id, P.EMPTY, objs))
        assert h.ev.payload is not None
        assert len(peer.conn.imports) == kept
        assert [ev.obj for ev in e.inbox if isinstance(ev, P.ExportReleased)] == objs
    assert peer.alive


@pytest.mark.parametrize("settled", [False, True])
def test_a_call_on_a_promised_capability_is_seen_by_its_callees_calls_probe(settled):
    """An outside review: the calls probe's record named the callee of a call on a
    promised capability (receiverAnswer) "?" (probes.callee_of did not follow a
    Promised), before or after it settled.  A calls probe on the compartment it
    reached never saw such a call when the caller had none (an analysis granted a
    Probe on it missed it), and a probe on the caller counted it as "out ?"."""
    from supervisor import probes
    router = R.Router({"calc": CALC, "app": None, "d": CALC})
    registry = probes.Registry(lambda: 0)
    router.call_watch = registry.calls.watch
    router.call_probes = registry.calls
    registry.add(probes.spec("calc", "served", "calls", events=True))
    analysis = registry.subscribe(probes.Subscriber(["calc"]))
    calc = start(router, "calc", exports=True)
    d = start(router, "d", exports=True)
    app = start(router, "app", [grant("calc", "calc"), grant("d", "d")])
    q1, data = app.conn.send_call(app.grants[0].import_id, CALC, 1)
    app.send(data)                                   # calc's counter, not answered yet
    _q2, data = app.conn.send_call(app.grants[1].import_id, CALC, 2, Content.capability(0),
                                   [P.ReceiverAnswer(q1, ())])
    app.send(data)                                   # ... passed on to d
    (first,) = calc.inbox
    calc.inbox.clear()
    (second,) = d.inbox
    promised = second.payload.caps[0].import_id
    counter = object()
    if settled:
        calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [counter]))
    body = Content.standalone([struct.pack("<QQ", 1 << 32, 5)])
    d.send(d.conn.send_call(promised, OBSERVER, 4, body)[1])     # d calls what calc gives
    if not settled:
        calc.send(calc.conn.send_return(first.answer_id, Content.capability(0), [counter]))
    call = next(ev for ev in calc.inbox if ev.target is counter)
    calc.send(calc.conn.send_return(call.answer_id, Content()))
    registry.take_calls()
    events, _ = analysis.take(10)
    assert [(e["caller"], e["callee"], e["compartment"], e["outcome"]) for e in events
            if e["caller"] == "d"] == [("d", "calc", "calc", "returned")]


def test_status_counts_the_calls_waiting_for_a_compartments_start_or_restart():
    """An outside review: `wsuper status` said '0 in' for a compartment that was
    starting or restarting, however many calls waited for it (calls to a compartment
    that is not up wait for it, each up to its call_time): `status` counted only
    the calls forwarded to a live engine, so an operator could not see what waited.
    Calls waiting for its start are calls to it, in flight."""
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: 0.0,
                      limits={"calc": R.Limits(call_time=2.0)})
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    calc, _starting = start(router, "calc", exports=True, later=True)
    for _ in range(3):
        app.send(app.conn.send_call(h, CALC, 0)[1])          # wait for its first start
    assert app.inbox == []
    assert router.status("calc")["calls_to"] == 3
    app.deliver(router.start_failed(router.engines["calc"], "wasm trap: unreachable")
                or router._flush())
    app.deliver(router.stop_engine("calc", "it failed to start"))
    app.inbox.clear()                                        # those failed with that start
    assert router.status("calc")["calls_to"] == 0
    for _ in range(2):
        app.send(app.conn.send_call(h, CALC, 0)[1])          # during the restart delay
    assert app.inbox == []
    assert router.status("calc")["calls_to"] == 2
    calc = start(router, "calc", exports=True)               # they go to it now
    assert len(calc.inbox) == 2 and router.status("calc")["calls_to"] == 2
    for call in calc.inbox:
        calc.send(calc.conn.send_return(call.answer_id))
    assert len(app.inbox) == 2 and router.status("calc")["calls_to"] == 0


def test_who_serves_a_call_of_ours_is_known_without_walking_every_call_in_flight():
    """An outside review: with every external connection taken, each new connection
    asks the router which peers serve a call of its (`serving`, so that a busy
    client is not closed to make room), and that walked every question the router
    has open in the whole system: a client connecting and being refused again and
    again cost the supervisor's loop O(all calls in flight) a connection (0.23 ms at
    8,000), as refusals past a soft bound did (_Pending).  The peers with a question
    open are now kept as questions come and go."""
    router = R.Router({"calc": CALC, "app": None}, external=("calc",))
    calc = start(router, "calc", exports=True)
    clients = [client(router, f"c{i}") for i in range(3)]
    for c in clients[:2]:
        for _ in range(4):
            c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
    assert router.serving() == {calc.pid}

    class Unwalkable(type(router._pending)):
        def items(self):
            raise AssertionError("serving() walked every call in flight")
        keys = values = __iter__ = items
    walled = Unwalkable()
    for k, v in dict.items(router._pending):
        walled[k] = v
    router._pending = walled
    assert router.serving() == {calc.pid}
    router._pending = type(walled).__mro__[1]()
    for k, v in dict.items(walled):
        router._pending[k] = v
    # the set follows the questions: answered, and a peer lost
    for ev in list(calc.inbox)[:4]:
        calc.send(calc.conn.send_return(ev.answer_id))
    assert router.serving() == {calc.pid}
    for ev in list(calc.inbox)[4:]:
        calc.send(calc.conn.send_return(ev.answer_id))
    assert router.serving() == set() and router._pending.at == {}
    clients[2].send(clients[2].conn.send_call(clients[2].grants[0].import_id, CALC, 0)[1])
    assert router.serving() == {calc.pid}
    router.disconnected(calc.pid, "engine exited")
    assert router.serving() == set() and router._pending.at == {}


def test_a_long_chain_of_promises_is_let_go_of_without_recursion():
    """A client passed, in each of many calls sent in one go, the capability
    promised in the answer to the call before it (receiverAnswer): each promise
    resolved to the one before, a chain as long as the client made it (600 calls
    of a real client, 50 at a time).  Letting go of it was recursion, three frames
    a link (a promise let go of drops what it resolved to, and so on): when the
    client disconnected, its loss ended in RecursionError halfway ("internal error
    after it was lost"), and what it had not reached yet stayed: the capabilities
    it held at the callee, its promises.  What a capability let go of held is let
    go of in a work list (Router.sweep)."""
    depth = 1500
    # (calc's handles: one caller's capabilities there may fill half of them,
    # Router._check_handles)
    router = R.Router({"calc": CALC}, external=("calc",),
                      limits={"calc": R.Limits(handles=4 * depth)},
                      external_limits=R.Limits(in_flight=2 * depth, handles=2 * depth))
    calc = start(router, "calc", exports=True)
    a = client(router)
    target = a.grants[0].import_id
    q, data = a.conn.send_call(target, CALC, 0, Content.capability(0), [object()])
    for _ in range(depth):
        q, more = a.conn.send_call(target, CALC, 0, Content.capability(0),
                                   [P.ReceiverAnswer(q, ())])
        data += more
    a.send(data)
    calls = [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]
    assert len(calls) == depth + 1
    # each answered with the capability it was passed (and let go of), the last call
    # first: each promise resolves to one not resolved yet, so the chain is made
    # whatever a promise settles on (Router._past_settled)
    for ev in reversed(calls):
        (cap,) = ev.payload.caps
        calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                        [P.RemoteRef(cap.import_id)]))
        calc.send(calc.conn.send_release(cap.import_id))
    assert not [ev for ev in a.inbox if ev.error]
    calc_peer = router.engines["calc"]
    assert not calc_peer.conn.exports
    # the client lets go of all but the newest (the answer to its last call, which
    # came first), then goes: the chain is let go of from its newest end
    answers = [ev for ev in a.inbox if isinstance(ev, P.ReturnReceived)]
    assert len(answers) == depth + 1
    newest = answers[0].payload.caps[0]
    for ev in answers:
        got = ev.payload.caps[0]
        if isinstance(got, P.Imported) and got != newest:
            a.send(a.conn.send_release(got.import_id))
    effects = router.disconnected(a.pid, "gone")
    assert not [e for e in effects if isinstance(e, fx.Notice)], effects
    assert not router._promises and not router.peers.get(a.pid)
    # the router goes on: another client's call reaches calc
    b = client(router, "b")
    b.send(b.conn.send_call(b.grants[0].import_id, CALC, 0)[1])
    assert [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)][-1].target is calc.main


def test_a_promise_settles_on_what_the_promises_on_its_way_resolved_to():
    """A client whose every call passed the capability promised in the answer to its
    call before (echo.hold returns it; calc's fake here), answered in order, and
    that let go of each but the newest: each promise settled on the promise before
    it, which it held, and so on: the client held one capability and the router a
    chain as long as the client liked (~230 bytes a link, without bound), on which
    calls failed past 64 links ("more than 64 promises on the way").  A promise
    settles on what the promises on its way resolved to."""
    import gc
    depth = 3 * R.MAX_HOPS
    router = R.Router({"calc": CALC}, external=("calc",),
                      external_limits=R.Limits(in_flight=2 * depth))
    calc = start(router, "calc", exports=True)
    a = client(router)
    target = a.grants[0].import_id
    mine = object()
    q, data = a.conn.send_call(target, CALC, 0, Content.capability(0), [mine])
    for _ in range(depth):
        q, more = a.conn.send_call(target, CALC, 0, Content.capability(0),
                                   [P.ReceiverAnswer(q, ())])
        data += more
    a.send(data)
    for ev in [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]:
        (cap,) = ev.payload.caps
        calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                        [P.RemoteRef(cap.import_id)]))
        calc.send(calc.conn.send_release(cap.import_id))
    answers = [ev for ev in a.inbox if isinstance(ev, P.ReturnReceived)]
    assert len(answers) == depth + 1 and not [ev for ev in answers if ev.error]
    # each answer names what its promise resolved to: a's own object, come back
    assert [ev.payload.caps for ev in answers] == [(P.Exported(mine),)] * (depth + 1)
    for ev in answers:
        a.send(a.conn.send_finish(ev.question_id))
    peer = router.peers[a.pid]
    held = [o for o in gc.get_objects() if isinstance(o, R.Promised)
            and o.peer is peer and not o.released]
    assert len(held) <= 2, f"{len(held)} promises held for one capability"


@pytest.mark.parametrize("order", ["in order", "last first"])
def test_a_clients_own_object_come_back_through_a_resolved_promise_is_its_own(order):
    """A client passes its object to calc (echo-like here) and, in the same breath,
    the capability promised by that call to calc again (receiverAnswer), which
    returns it.  The promise has resolved to the client's own object by the time
    the second answer goes: the answer names that object as the client's own
    (receiverHosted), as Cap'n Proto's RPC does.  It was exported as the promise,
    a new import of the supervisor's, and every call the client made on its own
    object went through the supervisor and back.  Answered last first, the
    promise has not resolved yet: exported as itself (no Resolve is sent), its
    calls still reach the client's object."""
    router = R.Router({"calc": CALC}, external=("calc",), names=NAMES)
    calc = start(router, "calc", exports=True)
    a = client(router)
    target = a.grants[0].import_id
    mine = object()
    q1, data = a.conn.send_call(target, CALC, 0, Content.capability(0), [mine])
    q2, more = a.conn.send_call(target, CALC, 0, Content.capability(0),
                                [P.ReceiverAnswer(q1, ())])
    a.send(data + more)
    calls = [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]
    if order == "last first":
        calls.reverse()
    for ev in calls:
        (cap,) = ev.payload.caps
        calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                        [P.RemoteRef(cap.import_id)]))
        calc.send(calc.conn.send_release(cap.import_id))
    answers = {ev.question_id: ev.payload.caps[0] for ev in a.inbox
               if isinstance(ev, P.ReturnReceived)}
    assert answers[q1] == P.Exported(mine)
    if order == "in order":
        assert answers[q2] == P.Exported(mine)
    else:
        assert isinstance(answers[q2], P.Imported)
        a.inbox.clear()
        a.send(a.conn.send_call(answers[q2].import_id, OBSERVER, 0)[1])
        assert [ev.target for ev in a.inbox if isinstance(ev, P.CallReceived)] == [mine]
    for q in (q1, q2):
        a.send(a.conn.send_finish(q))
    assert router.peers[a.pid].alive


def test_a_promise_settled_on_one_not_resolved_yet_settles_again_when_that_one_does():
    """The chain of the test above, with its answers last first: each promise settled
    on one not resolved yet (no promise on its way to pass), and kept it as its
    target for good: the client, letting go of all but its newest capability, left
    the router a chain as long as it liked (a client makes such answers with calls on
    objects it hosts itself, which it answers in any order).  A promise that others
    settled on settles them again, on what it settles on (Router._settle_followers)."""
    import gc
    depth = 3 * R.MAX_HOPS
    router = R.Router({"calc": CALC}, external=("calc",),
                      external_limits=R.Limits(in_flight=2 * depth))
    calc = start(router, "calc", exports=True)
    a = client(router)
    target = a.grants[0].import_id
    mine = object()
    q, data = a.conn.send_call(target, CALC, 0, Content.capability(0), [mine])
    for _ in range(depth):
        q, more = a.conn.send_call(target, CALC, 0, Content.capability(0),
                                   [P.ReceiverAnswer(q, ())])
        data += more
    a.send(data)
    for ev in reversed([ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]):
        (cap,) = ev.payload.caps
        calc.send(calc.conn.send_return(ev.answer_id, Content.capability(0),
                                        [P.RemoteRef(cap.import_id)]))
        calc.send(calc.conn.send_release(cap.import_id))
    answers = [ev for ev in a.inbox if isinstance(ev, P.ReturnReceived)]
    assert len(answers) == depth + 1 and not [ev for ev in answers if ev.error]
    newest = answers[0].payload.caps[0].import_id           # its last call's, first
    for ev in answers:
        a.send(a.conn.send_finish(ev.question_id))
        got = ev.payload.caps[0]
        if isinstance(got, P.Imported) and got.import_id != newest:
            a.send(a.conn.send_release(got.import_id))
    peer = router.peers[a.pid]
    held = [o for o in gc.get_objects() if isinstance(o, R.Promised)
            and o.peer is peer and not o.released]
    assert len(held) <= 2, f"{len(held)} promises held for one capability"
    a.inbox.clear()
    a.send(a.conn.send_call(newest, OBSERVER, 0)[1])
    assert [ev.target for ev in a.inbox if isinstance(ev, P.CallReceived)] == [mine], a.inbox


def test_letting_go_of_a_long_chain_of_capabilities_is_no_recursion():
    """What a capability let go of held is let go of in turn (a promise its target, a
    wrapper what it wraps): by recursion, three frames a link, a chain of 600 ended
    in RecursionError (the promise chains of the tests above, before promises
    settled past each other).  Router.sweep works through a list."""
    router = R.Router({"calc": CALC}, external=("calc",))
    start(router, "calc", exports=True)
    a = client(router)
    peer = router.peers[a.pid]
    chain = [R.Promised(peer, i, ()) for i in range(5000)]
    for inner, outer in zip(chain, chain[1:]):
        outer.target = inner
        inner.refs += 1
    chain[-1].refs = 1
    router._drop(chain[-1])
    assert all(p.released for p in chain)


def test_a_status_of_every_compartment_walks_the_calls_in_flight_once():
    """A review of the operator's commands: `wsuper status` asked Router.status for
    each compartment, and each walked every question of the router to count the
    calls forwarded to it: C compartments with P calls in flight cost the loop
    C x P (~1 s at 1,000 compartments with 64 calls each), for every status, with
    every compartment waiting.  forwarded_to() counts them all in one pass, and
    status(name, forwarded) walks nothing."""
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: 0.0)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    for _ in range(3):
        app.send(app.conn.send_call(h, CALC, 0)[1])
    assert len(calc.inbox) == 3
    alone = {n: router.status(n) for n in ("calc", "app")}
    forwarded = router.forwarded_to()

    def walked():
        raise AssertionError("status walked the calls in flight again")
    router._pending.items = walked
    assert {n: router.status(n, forwarded) for n in ("calc", "app")} == alone
    assert alone["calc"]["calls_to"] == 3 and alone["app"]["calls_from"] == 3


def test_one_caller_cannot_fill_a_callees_c_list_with_capabilities_it_passes():
    """An outside review (capabilities in motion): the callee's c-list (its `handles`)
    was one for all its callers.  An external client passed 1,024 objects of its own
    in 4 calls calc had not answered yet (a busy engine reads them later): calc's
    table was full, and while those calls waited another compartment's call passing
    calc one capability (a callback) was refused "calc would hold more than 1024
    capabilities", and so was calc's own call whose answer brought it a capability
    (a File it opened, a Counter it asked for): it could get nothing more.  Past half
    the table a caller whose capabilities there are more than a quarter of it is
    refused, and params fill at most three quarters: the rest is for what the
    callee asks for itself."""
    router = R.Router({"calc": CALC, "app": None, "store": CALC}, external=("calc",),
                      names=NAMES)
    store = start(router, "store", exports=True)
    calc = start(router, "calc", [grant("store", "store")], exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    x = client(router, "x")
    exports = router.engines["calc"].conn.exports
    refused = []
    for _ in range(5):                     # up to calc's 1024 exactly, then one more
        x.inbox.clear()
        objs = [object() for _ in range(max(1, min(256, 1024 - len(exports))))]
        x.send(x.conn.send_call(x.grants[0].import_id, CALC, 0, P.EMPTY, objs)[1])
        refused += [ev.error for ev in x.inbox if isinstance(ev, P.ReturnReceived)]
    assert refused and all("calc holds" in e and "passed by x" in e for e in refused), refused
    assert len(exports) <= 1024 * 3 // 4
    # another caller's callback still reaches calc
    calc.inbox.clear()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, P.EMPTY, [object()])[1])
    assert [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)], app.inbox
    # and calc still gets what it asks for: a capability in an answer to its own call
    calc.inbox.clear()
    q, data = calc.conn.send_call(calc.grants[0].import_id, CALC, 1)
    calc.send(data)
    (call,) = [ev for ev in store.inbox if isinstance(ev, P.CallReceived)]
    store.send(store.conn.send_return(call.answer_id, Content.capability(0), [object()]))
    (ret,) = [ev for ev in calc.inbox if isinstance(ev, P.ReturnReceived)]
    assert ret.error is None and ret.payload.caps, ret.error


def test_one_caller_cannot_fill_a_callees_c_list_through_answers_to_its_callbacks():
    """An outside review: the share of the test above counted what callers passed
    in their calls only.  A client passed calc one observer, and answered each of
    calc's calls on it (an observer notified) with 256 objects of its own: counted
    as what calc asked for itself, four answers filled calc's whole table, and
    another caller's call passing calc a capability was refused "calc would hold
    more than 1024 capabilities".  What an answer to a call on something a caller
    passed brings (and, in turn, answers to calls on what that brought) counts to
    that caller's share; what calc's own grants answer does not."""
    router = R.Router({"calc": CALC, "app": None, "store": CALC}, external=("calc",),
                      names=NAMES)
    store = start(router, "store", exports=True)
    calc = start(router, "calc", [grant("store", "store")], exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    x = client(router, "x")
    exports = router.engines["calc"].conn.exports
    x.send(x.conn.send_call(x.grants[0].import_id, CALC, 0, P.EMPTY, [object()])[1])
    (c1,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    target = c1.payload.caps[0].import_id          # x's observer, at calc
    refused = []
    for _ in range(5):
        calc.inbox.clear()
        x.inbox.clear()
        calc.send(calc.conn.send_call(target, CALC, 0, P.EMPTY)[1])
        (call,) = [e for e in x.inbox if isinstance(e, P.CallReceived)]
        objs = [object() for _ in range(max(1, min(256, 1024 - len(exports))))]
        x.send(x.conn.send_return(call.answer_id, Content.capability(0), objs))
        (ret,) = [e for e in calc.inbox if isinstance(e, P.ReturnReceived)]
        if ret.error is None:
            target = ret.payload.caps[0].import_id     # what x's answer brought: x's too
        refused.append(ret.error)
    # the second call is on what the first answer brought: its answer is x's too
    assert refused[0] is None, refused
    assert all(e and "calc holds" in e and "passed by x" in e for e in refused[1:]), refused
    assert len(exports) <= 1 + 1 + 256          # store's grant, the observer, one answer
    # another caller's callback still reaches calc
    calc.inbox.clear()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, P.EMPTY, [object()])[1])
    assert [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)], app.inbox
    # and what calc's own grant answers is its own, past any caller's share
    for _ in range(2):
        calc.inbox.clear()
        store.inbox.clear()
        calc.send(calc.conn.send_call(calc.grants[0].import_id, CALC, 1)[1])
        (call,) = [ev for ev in store.inbox if isinstance(ev, P.CallReceived)]
        store.send(store.conn.send_return(call.answer_id, Content.capability(0),
                                          [object() for _ in range(200)]))
        (ret,) = [ev for ev in calc.inbox if isinstance(ev, P.ReturnReceived)]
        assert ret.error is None and ret.payload.caps, ret.error
    assert len(exports) > 1024 // 2


def test_a_client_that_reconnects_cannot_fill_a_callees_c_list_past_its_share():
    """An outside review: past half a callee's table a caller may have a quarter of
    it there, counted per caller.  What an external client passed stays in calc's
    c-list after it closes its connection (until calc releases it: a busy engine
    reads nothing, a guest keeps observers), and a client that connected again had
    a share anew: one connection at a time (half, then a quarter) filled the three
    quarters callers may fill, and every caller, the compartments too, was refused
    "would pass its share".  What external clients that are gone passed counts to
    every external caller's share, as the bytes of their calls do (_not_reading);
    the compartments' calls go on."""
    router = R.Router({"calc": CALC, "app": None}, external=("calc",), names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    peer = router.engines["calc"]
    refused = []
    for i in range(4):             # each connection passes what it may, then closes
        c = client(router, f"c{i}")
        for _ in range(4):
            c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0, P.EMPTY,
                                    [object() for _ in range(128)])[1])
        refused += [ev.error for ev in c.inbox if isinstance(ev, P.ReturnReceived)]
        c.deliver(router.disconnected(c.pid, "closed"))    # calc keeps what they passed
    assert refused and all("would pass its share" in e for e in refused), refused
    assert "external clients that are gone" in refused[-1], refused[-1]
    assert len(peer.passed) <= 1024 // 2
    # a compartment's callback still reaches calc
    kept = [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]
    calc.inbox.clear()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, P.EMPTY, [object()])[1])
    kept += [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)]
    assert kept[-1].payload.caps, app.inbox
    # calc lets go of what the gone clients passed: an external caller gets its share again
    held = {c.import_id for ev in kept for c in ev.payload.caps}
    for iid in held:
        calc.send(calc.conn.send_release(iid))
    assert not peer.passed and not peer.passed_gone, (len(peer.passed), peer.passed_gone)
    c = client(router, "again")
    c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0, P.EMPTY,
                            [object() for _ in range(200)])[1])
    assert [ev for ev in c.inbox if isinstance(ev, P.ReturnReceived)] == []


def test_a_compartment_that_restarts_cannot_fill_a_callees_c_list_past_its_share():
    """An outside review: as a client connecting again, a compartment restarted
    (a crash, its restart policy) is a new peer, and had a share of its callee's
    c-list anew while what its earlier instance passed stayed there (until the
    callee releases it): one instance at a time, app filled the three quarters
    callers may fill, and every caller, the external clients too, was refused
    "would pass its share".  What earlier instances of a compartment passed counts
    to its share."""
    router = R.Router({"calc": CALC, "app": None, "b": None}, external=("calc",),
                      names=NAMES)
    calc = start(router, "calc", exports=True)
    b = start(router, "b", [grant("calc", "calc")])
    peer = router.engines["calc"]
    refused = []
    for _ in range(3):             # each instance passes what it may, then crashes
        app = start(router, "app", [grant("calc", "calc")])
        for _ in range(4):
            app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, P.EMPTY,
                                        [object() for _ in range(128)])[1])
        refused += [ev.error for ev in app.inbox if isinstance(ev, P.ReturnReceived)]
        router.stop_engine("app", "crashed")            # calc keeps what it passed
    assert refused and all("would pass its share" in e for e in refused), refused
    assert "earlier instances of app" in refused[-1], refused[-1]
    assert len(peer.passed) <= 1024 // 2
    # another compartment's callback, and an external client's, still reach calc
    for c in (b, client(router, "x")):
        calc.inbox.clear()
        c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0, P.EMPTY, [object()])[1])
        assert [ev for ev in calc.inbox if isinstance(ev, P.CallReceived)], c.inbox


def test_an_answer_counted_to_a_caller_gone_meanwhile_counts_to_its_pool():
    """An outside review: app passed calc its store grant, calc called it (the
    answer counts to app's share, Call.charged), app crashed and calc let go of
    the grant before store answered.  The answer's capabilities were counted to
    app's old instance, which then had entries in calc's c-list but no pool:
    not counted to app's next instance's share (a share anew, one capability
    per such answer)."""
    router = R.Router({"calc": CALC, "app": None, "store": CALC}, external=("calc",),
                      names=NAMES)
    store = start(router, "store", exports=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc"), grant("store", "store")])
    peer = router.engines["calc"]
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0, P.EMPTY,
                                [P.RemoteRef(app.grants[1].import_id)])[1])
    (c1,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    target = c1.payload.caps[0].import_id           # store, passed by app
    calc.inbox.clear()
    calc.send(calc.conn.send_call(target, CALC, 1, P.EMPTY)[1])
    calls = [e for e in store.inbox if isinstance(e, P.CallReceived)]
    assert len(calls) == 1, (calc.inbox, app.grants, store.inbox)
    call = calls[0]
    router.stop_engine("app", "crashed")
    calc.send(calc.conn.send_release(target))
    calc.send(calc.conn.send_return(c1.answer_id))
    assert not peer.passed
    store.send(store.conn.send_return(call.answer_id, Content.capability(0), [object()]))
    (ret,) = [e for e in calc.inbox if isinstance(e, P.ReturnReceived)]
    assert ret.error is None and len(peer.passed) == 1
    assert peer.passed_gone == {("compartment", "app"): 1}, (peer.gone_by, peer.passed_gone)


def test_a_call_crossing_a_grant_twice_through_a_promise_spends_its_quota_once():
    """An outside review: a capability is wrapped by a grant's membrane at most once
    (Router._wrap), but _wrap cannot see past a promise not resolved yet: calc
    called back app's observer (passed through app.calc, max_uses) with a
    capability promised in the answer to a client's call to app, and app answered
    that call with its own app.calc grant.  What app held was then app.calc's
    wrapper around a promise resolved to app.calc's wrapper again, and each call
    app made on it spent two of app.calc's uses (docs: a quota counts each call
    once); a chain of such promises spent as many as it had links.  A call crosses
    each membrane once, however often it lies on its way."""
    router = R.Router({"calc": CALC, "app": CALC}, external=("calc", "app"), names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", max_uses=100)], exports=True)
    m = router.membranes["app.calc"]
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 2, P.EMPTY, [object()])[1])
    (c1,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    observer = c1.payload.caps[0].import_id          # behind app.calc's reverse
    assert m.uses_left == 99
    x = client(router, "x", "app")
    get = hosted.GATEWAY.method("get")
    gateway = next(i for i in x.conn.imports if i != x.grants[0].import_id)
    x.send(x.conn.send_call(gateway, hosted.GATEWAY.id, get.ordinal,
                            payloads.build(get.params, {"name": "calc"})[0])[1])
    calc_at_x = x.inbox.pop().payload.caps[0].import_id
    q1, data = x.conn.send_call(x.grants[0].import_id, CALC, 1)     # app answers later
    x.send(data)
    (a1,) = [e for e in app.inbox if isinstance(e, P.CallReceived)]
    calc.inbox.clear()
    x.send(x.conn.send_call(calc_at_x, CALC, 0, Content.capability(0),
                            [P.ReceiverAnswer(q1, ())])[1])
    (c2,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    app.inbox.clear()
    calc.send(calc.conn.send_call(observer, 0xC0FFEE0000000003, 0, Content.capability(0),
                                  [P.RemoteRef(c2.payload.caps[0].import_id)])[1])
    (a2,) = [e for e in app.inbox if isinstance(e, P.CallReceived)]
    app.send(app.conn.send_return(a1.answer_id, Content.capability(0),
                                  [P.RemoteRef(app.grants[0].import_id)]))
    calc.inbox.clear()
    app.send(app.conn.send_call(a2.payload.caps[0].import_id, CALC, 0, P.EMPTY)[1])
    assert [e.target for e in calc.inbox if isinstance(e, P.CallReceived)] == [calc.main]
    assert m.uses_left == 98


def test_what_a_return_released_before_it_proved_malformed_is_let_go_of_with_its_peer():
    # A reviewer's attack: a Return (releaseParamCaps, the default) releases the
    # capabilities the call passed as soon as it is read, and the message failed
    # only after that (a capability it never had, here): the connection is cut
    # off, and the events of that message, the releases among them, are never
    # seen. The router held one reference to each object exported to the peer and
    # lets go of the exports left at its loss: these were no longer among them, so
    # what app passed stayed imported from app for as long as app lived.
    from capnp_schemas import rpc
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    mine = object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, 0))
    wire.set_word(seg, 1, wire.cap_pointer(0))
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 2,
                                  Content.standalone([bytes(seg)]), [mine])
    app.send(data)
    (call,) = calc.inbox
    assert app.conn.export_id(mine) is not None
    m = rpc.Message.new_message()
    r = m.init("return")
    r.answerId = call.answer_id                       # releaseParamCaps: true
    r.init("results").init("capTable", 1)[0].receiverHosted = 999
    calc.send(wire.frame(m.to_segments()))
    assert any(isinstance(e, fx.Close) for e in calc.effects)
    assert app.conn.export_id(mine) is None           # released at its host
    assert any(isinstance(ev, P.ExportReleased) and ev.obj is mine for ev in app.inbox)


@pytest.mark.parametrize("then", ["restarts", "fails", "nothing decided"])
def test_calls_made_once_an_engine_closed_its_connection_wait_for_what_its_end_decides(then):
    """An engine that closed its connection has gone, though how it ended is not
    known yet (the runtime waits for its exit status and its last words, up to a
    second or two): calls made meanwhile went to it and failed with it,
    "compartment calc is gone: engine exited ...", and so did those made after it
    was lost and before the runtime decided to restart it (an outside review: a
    caller's next call after one that made its callee exit, one time in two).  They
    wait now: for the next incarnation if it restarts, failing with the decision
    otherwise, or as before ("is gone") if nothing was decided."""
    router = R.Router({"calc": CALC, "app": None})
    app = start(router, "app", [grant("calc", "calc")])
    h = app.grants[0].import_id
    calc = start(router, "calc", exports=True)
    app.send(app.conn.send_call(h, CALC, 0)[1])          # forwarded: it dies with calc
    assert calc.inbox
    app.deliver(router.engine_closed(calc.pid))
    app.send(app.conn.send_call(h, CALC, 0)[1])          # made once it closed: waits
    assert app.inbox == [] and len(calc.inbox) == 1
    app.deliver(router.disconnected(calc.pid, "engine exited with code 7"))
    (lost,) = app.inbox                                  # the one it had: fails
    assert lost.error_type == "disconnected" and "engine exited with code 7" in lost.error
    app.inbox.clear()
    app.send(app.conn.send_call(h, CALC, 0)[1])          # lost, not yet decided: waits
    assert app.inbox == []
    if then == "restarts":
        app.deliver(router.stop_engine("calc", "engine exited with code 7"))
    elif then == "fails":
        app.deliver(router.stop_engine("calc", "engine exited with code 7"))
        app.deliver(router.fail_compartment("calc", "3 restarts within 60 s"))
    app.deliver(router.engine_ended(calc.pid))
    if then == "restarts":
        assert app.inbox == []
        calc = start(router, "calc", exports=True)       # the next incarnation serves both
        assert len(calc.inbox) == 2
        for call in list(calc.inbox):
            calc.send(calc.conn.send_return(call.answer_id))
        assert [r.error for r in app.inbox] == [None, None]
    else:
        errors = [r.error for r in app.inbox]
        assert len(errors) == 2 and all(errors), errors
        want = "compartment calc failed: 3 restarts" if then == "fails" else \
            "compartment calc is gone: engine exited with code 7"
        assert all(want in e for e in errors), errors
        app.inbox.clear()
        app.send(app.conn.send_call(h, CALC, 0)[1])      # and so do the calls after
        assert want in app.inbox.pop().error


def test_external_clients_cannot_take_the_whole_pool_of_pipelined_bytes_from_the_compartments():
    """An outside review: the pool of bytes calls may hold while they wait (pipelined
    on an answer, on a promise, on a compartment's start) beyond each connection's own
    1 MiB was one for all, first come first served: five connections of one local
    client, each with 16 MiB of calls pipelined on a call of spin's that spin did not
    answer, could take all 64 MiB (15 MiB each beyond its own), and every compartment's calls waiting past its own 1 MiB
    (on another compartment's restart, say) were refused "in all" until they went.
    External clients together may take half of the pool now; the rest is the
    compartments'."""
    small = R.Limits(message_size=1 << 20)           # 2 MiB a connection, 1 MiB pooled
    router = R.Router({"calc": CALC, "a": None}, external=("calc",), limits={"a": small},
                      external_limits=small, pipelined_total=4 << 20)
    start(router, "calc", exports=True)
    a = start(router, "a", [grant("calc", "calc")])
    clients = [client(router, f"client{i}") for i in range(4)]
    body = Content.standalone([struct.pack("<QQ", 1 << 48, 0) + bytes(124 << 10)])

    def pipeline(peer, target) -> tuple:
        """A call calc does not answer yet, and calls pipelined on it until one is
        refused: how many went, and why the last did not."""
        qid, data = peer.conn.send_call(target, CALC, 0)
        peer.send(data)
        n = 0
        while not peer.inbox:
            peer.send(peer.conn.send_call((qid, ()), CALC, 0, body)[1])
            n += 1
        refused = peer.inbox.pop()
        assert refused.error_type == "overloaded", refused
        return n - 1, refused.error

    whys = [pipeline(c, c.grants[0].import_id)[1] for c in clients]
    assert router.pipelined_pooled <= (4 << 20) // 2
    assert "limit of external clients' calls waiting" in whys[-1], whys
    queued, why = pipeline(a, a.grants[0].import_id)
    assert "per connection" in why, why                # its own bound, not the pool's
    assert router.peers[a.pid].pipelined > R.PIPELINED_PEER_BYTES
    for c in clients:
        router.disconnected(c.pid, "gone")
    router.disconnected(a.pid, "gone")
    assert router.pipelined_bytes == router.pipelined_pooled == 0


@pytest.mark.parametrize("refused", ["size", "handles"])
def test_an_answer_its_caller_cannot_take_is_recorded_failed_as_its_caller_is_told(refused):
    """The callee returned, but the router refused the answer to the caller: results
    larger than the caller's message_size, or capabilities past its `handles`.  The
    caller got an exception; the audit (and a calls probe) had closed the call
    `returned` before those checks, and the failure that followed found the record
    gone: the audit said the call returned, with no reason, where its caller was
    told it failed.  It is recorded as its caller is told: failed, with the reason."""
    limits = {"app": R.Limits(message_size=1024)} if refused == "size" else \
        {"app": R.Limits(handles=2)}
    from supervisor import probes
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, audit=True, limits=limits)
    registry = probes.Registry(lambda: 0)
    router.call_watch = registry.calls.watch
    router.call_probes = registry.calls
    registry.add(probes.spec("calc", "served", "calls", events=True))
    analysis = registry.subscribe(probes.Subscriber(["calc"]))
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 1)
    app.send(data)
    (call,) = calc.inbox
    if refused == "size":
        # (a struct of 513 data words: it was one word followed by 4 KiB of
        # nothing, which counted while the segments were measured: content_bytes)
        content, caps = Content.standalone([struct.pack("<Q", 513 << 32) + bytes(8 * 513)]), []
    else:
        seg = bytearray(struct.pack("<QQQQ", 3 << 48, wire.cap_pointer(0), wire.cap_pointer(1),
                                    wire.cap_pointer(2)))
        content, caps = Content.standalone([seg]), [object(), object(), object()]
    calc.send(calc.conn.send_return(call.answer_id, content, caps))
    (ret,) = app.inbox
    assert ret.error is not None
    records = [e.record for e in app.effects + calc.effects if isinstance(e, fx.Audit)]
    (record,) = [r for r in records if r.get("method") == "newCounter"]
    assert record["outcome"] == "failed", record
    assert record["reason"] in ret.error
    registry.take_calls()
    events, _ = analysis.take(10)
    assert [(e["name"], e["outcome"]) for e in events] == [("Calc.newCounter", "failed")]


def test_a_tail_call_whose_results_the_client_cannot_hold_is_recorded_failed():
    """The same for a tail call (sendResultsTo.yourself): results past the client's
    `handles` become an error, the outcome the question that takes them gets.  The
    audit had closed the call `returned` before that check: it said returned for
    results the client never got."""
    router = R.Router({"calc": CALC}, external=("calc",), names=NAMES, audit=True,
                      external_limits=R.Limits(handles=2))
    calc = start(router, "calc", exports=True)
    cl = client(router)
    cl.feed = lambda data: None
    cl.send(_tail_call(40, cl.grants[0].import_id, CALC, 1))
    (call,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
    calc.send(calc.conn.send_return(call.answer_id, _four_caps(), [object() for _ in range(4)]))
    (kept,) = router._tails.values()
    assert kept.error is not None and "limit handles" in kept.error.reason
    records = [e.record for e in cl.effects + calc.effects if isinstance(e, fx.Audit)]
    (record,) = [r for r in records if r.get("method") == "newCounter"]
    assert record["outcome"] == "failed" and "limit handles" in record["reason"], record


def test_revoking_a_probe_grant_lets_go_of_its_event_queue_at_once():
    """A probe grant's served object is a Subscriber the prober copies every event
    of the compartment it watches into (up to 10,000 kept).  Revoked, nothing can
    read it again, yet it stayed subscribed until its holder released its handle or
    ended, which a compartment that keeps it never does: the supervisor went on
    copying the watched compartment's events (call names, failure reasons) into a
    queue nobody could read.  Revocation lets go of it at once, as of a revoked
    directory, and once only."""
    router = R.Router({"app": None, "calc": CALC}, names=NAMES)
    start(router, "calc", exports=True)
    app = start(router, "app", [grant("watch", "probe", "host", revocable=True, on="calc"),
                                grant("keep", "probe", "host", on="calc")],
                hosts={"watch": "the-subscriber", "keep": "kept-subscriber"},
                answer_hosts=False)
    effects = router.revoke("app.watch")
    assert [e for e in effects if isinstance(e, fx.HostRelease)] == [
        fx.HostRelease("probe", "the-subscriber")]
    app.effects.clear()
    app.send(app.conn.send_release(app.grants[0].import_id))
    assert not [e for e in app.effects if isinstance(e, fx.HostRelease)]
    app.deliver(router.disconnected(app.pid, "gone"))
    assert fx.HostRelease("probe", "kept-subscriber") in app.effects
    assert fx.HostRelease("probe", "the-subscriber") not in app.effects


def test_an_expired_host_grant_lets_go_of_what_the_host_serves_for_it():
    """A host grant with expires_after lets no call through once it has expired, as
    a revoked one; but only a revocation let go of what the host serves for it: a
    probe grant's queue took a copy of every event of the compartment it watches
    (10,000 kept), a directory grant's descriptors stayed open, for as long as the
    holder lived, and both were opened again at each restart of the holder (a
    directory removed after the expiry failed every later start).  At its expiry it
    is let go of, once (Router.expire), and the grant is said ended for good."""
    now = [0.0]
    router = R.Router({"app": None, "calc": CALC}, clock=lambda: now[0], names=NAMES)
    start(router, "calc", exports=True)
    app = start(router, "app", [grant("watch", "probe", "host", expires_after=5, on="calc"),
                                grant("keep", "probe", "host", on="calc")],
                hosts={"watch": "the-subscriber", "keep": "kept-subscriber"},
                answer_hosts=False)
    assert router.next_deadline() == 5.0
    assert not [e for e in router.expire() if isinstance(e, fx.HostRelease)]
    assert not router.grant_ended("app.watch")
    now[0] = 5.0
    assert router.grant_ended("app.watch") and not router.grant_ended("app.keep")
    assert [e for e in router.expire() if isinstance(e, fx.HostRelease)] == [
        fx.HostRelease("probe", "the-subscriber")]
    assert router.next_deadline() is None
    app.effects.clear()
    app.send(app.conn.send_release(app.grants[0].import_id))
    assert not [e for e in app.effects if isinstance(e, fx.HostRelease)]
    app.deliver(router.disconnected(app.pid, "gone"))
    assert fx.HostRelease("probe", "kept-subscriber") in app.effects
    assert fx.HostRelease("probe", "the-subscriber") not in app.effects


def test_a_call_that_waited_past_its_grants_expiry_never_reaches_the_callee():
    """A call through a grant with expires_after, made while its callee restarts,
    waits for the callee's next start (at most its call_time: 30 s by default, up
    to a day).  The grant's membrane admitted it as it began to wait, and nothing
    looked again: once the callee was up the call went on, though the grant had
    expired meanwhile (a call made a moment before the expiry reached the callee
    up to call_time after it).  A waiting call now goes on only through
    membranes that have not expired, else it is denied as a new call would be."""
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None}, clock=lambda: now[0], names=NAMES,
                      audit=True)
    app = start(router, "app", [grant("calc", "calc", expires_after=5)])
    calc, starts = start(router, "calc", exports=True, later=True)
    now[0] = 4.0
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert router.proxies["calc"].queue and calc.inbox == []
    now[0] = 6.0
    calc.deliver(starts)                                  # calc is up, past the expiry
    assert [e for e in calc.inbox if isinstance(e, P.CallReceived)] == [], \
        "a call through an expired grant reached its callee"
    (ret,) = [ev for ev in app.inbox if isinstance(ev, P.ReturnReceived)]
    assert "app.calc has expired (expires_after)" in ret.error, ret.error
    records = [e.record for e in app.effects + calc.effects if isinstance(e, fx.Audit)]
    assert [(r["capability"], r["outcome"]) for r in records] == [("app.calc", "denied")]
    assert not router.proxies["calc"].queue


def test_a_host_call_that_waited_its_turn_past_its_grants_expiry_is_not_run():
    """A host call waits its turn (its object's earlier operations, two at a time a
    compartment, for at most IO_DEADLINE) after its grant's membrane admitted it.
    The runtime asks `host_call_live` before it runs the job, which looked at a
    revocation but not at an expiry: a write through a grant that expired while it
    waited behind a slow one was still done.  It is not run now, and its caller is
    denied as a new call would be."""
    now = [0.0]
    router = R.Router({"app": None}, clock=lambda: now[0],
                      names={CLOCK: ("Clock", {0: "wall"})}, audit=True)
    app = start(router, "app", [grant("time", "clock", "host", expires_after=5)],
                answer_hosts=False)
    now[0] = 4.0
    app.send(app.conn.send_call(app.grants[0].import_id, CLOCK, 0)[1])
    (waiting,) = app.host_calls
    assert router.host_call_live(waiting.token)
    now[0] = 6.0
    assert not router.host_call_live(waiting.token), "an expired grant's host call runs"
    reason = router.host_call_expired(waiting.token)
    assert reason == "app.time has expired (expires_after)"
    app.deliver(router.host_failed(waiting.token, reason, "denied"))
    ret = app.inbox.pop()
    assert ret.error == "denied: app.time has expired (expires_after)", ret.error
    records = [e.record for e in app.effects if isinstance(e, fx.Audit)]
    assert [(r["capability"], r["outcome"]) for r in records] == [("app.time", "denied")]
    assert not router._host_of and not router._host_calls


def test_the_revocations_record_is_the_routers_before_its_holder_starts_and_after():
    """`wsuper revoke` hands the router the revocation's record (Router.revoke's
    `event`), which writes it among the calls' records: before its holder started
    (no membrane yet) as after, before the denials it causes; not at all for a
    grant revoked already, nor without an audit."""
    event = {"time": None, "event": "grant revoked", "grant": "app.calc", "by": "operator"}
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, audit=True,
                      revocable=("app.calc",))
    start(router, "calc", exports=True)
    records = [e.record for e in router.revoke("app.calc", event) if isinstance(e, fx.Audit)]
    assert [(r["event"], r["grant"]) for r in records] == [("grant revoked", "app.calc")]
    assert records[0]["time"] is not None
    assert not [e for e in router.revoke("app.calc", event) if isinstance(e, fx.Audit)]
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, audit=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc", revocable=True)])
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert len(calc.inbox) == 1                            # in flight
    records = [e.record for e in router.revoke("app.calc", event) if isinstance(e, fx.Audit)]
    assert [r.get("event") or r["outcome"] for r in records] == ["grant revoked", "denied"]
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, revocable=("app.calc",))
    assert not [e for e in router.revoke("app.calc", event) if isinstance(e, fx.Audit)]


def test_a_callers_finish_of_a_call_not_answered_yet_cancels_it_at_its_callee():
    """rpc.capnp: a Finish before the Return cancels the call.  The router ignored
    a live caller's (it handled only a lost caller's): the callee ran the call to
    its end, and every call it made for it, for nobody.  Now the callee gets
    Finish (an engine then does not run it, or fails the next host call of it),
    the caller its Return at once, the audit says why, and the late answer goes
    nowhere; another caller's call to the same callee runs on."""
    router = R.Router({"calc": CALC, "app": None, "other": None}, names=NAMES, audit=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    other = start(router, "other", [grant("calc", "calc")])
    q1, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    other.send(other.conn.send_call(other.grants[0].import_id, CALC, 0)[1])
    mine, theirs = calc.inbox
    calc.inbox.clear()
    effects = router.receive(app.pid, app.conn.send_finish(q1))
    records = [e.record for e in effects if isinstance(e, fx.Audit)]
    app.deliver(effects)
    assert calc.conn.answers[mine.answer_id].finished             # cancelled at calc
    assert not calc.conn.answers[theirs.answer_id].finished
    (ret,) = app.inbox
    assert ret.error == "call canceled"
    assert [(r["caller"], r["outcome"], r["reason"]) for r in records] == \
        [("app", "failed", "app cancelled this call (Finish) before it was answered")]
    calc.send(calc.conn.send_return(mine.answer_id, Content.capability(0), [object()]))
    assert app.inbox == [ret]                                     # the late answer: nowhere
    assert q1 not in app.conn.questions                           # its id is free
    calc.send(calc.conn.send_return(theirs.answer_id))
    assert other.inbox.pop().payload is not None
    assert not router._pending.of_reply


def test_calls_a_client_cancels_count_against_orphans_limit_until_their_callee_answers():
    """A Finish that cancels a call answers it at once (`canceled`), which frees the
    caller's place of in_flight while its callee may still hold the call: calling
    and cancelling again and again queued work without bound (in_flight 2, six
    calls at calc and counting).  Such calls count against orphans_limit, as those
    of a client that went do, until the callee answers them."""
    router = R.Router({"calc": CALC}, external=("calc",), external_limits=R.Limits(in_flight=2))
    assert router.orphans_limit == 4
    calc = start(router, "calc", exports=True)
    c = client(router, "canceller")
    for _ in range(3):
        qs = []
        for _ in range(2):
            q, data = c.conn.send_call(c.grants[0].import_id, CALC, 0)
            c.send(data)
            qs.append(q)
        for q in qs:
            c.send(c.conn.send_finish(q))
    # (its own in_flight bounds them while it stays: the next test)
    assert len(calc.inbox) == 2 and all(calc.conn.answers[e.answer_id].finished
                                        for e in calc.inbox)
    refused = [r for r in c.inbox if r.error_type == "overloaded"]
    assert refused and "limit in_flight = 2" in refused[-1].error \
        and "2 of them it cancelled" in refused[-1].error
    for e in calc.inbox:                             # calc answers the cancellations
        calc.send(calc.conn.send_exception(e.answer_id, "call canceled"))
    calc.inbox.clear()
    c.send(c.conn.send_call(c.grants[0].import_id, CALC, 0)[1])
    assert len(calc.inbox) == 1                      # room again


def _far_params(size: int) -> Content:
    """Params of `size` bytes as a guest would frame them in one segment (root
    pointer, a struct of one pointer, and Data of `size` - 24 bytes), laid out as
    pycapnp and Cap'n Proto's C++ lay out params too large for the segment of
    the message's header: the struct beside the header, its Data in a segment of
    its own, reached by a far pointer (to a landing pad)."""
    data = size - 24
    head = struct.pack("<QQ", 1 << 48, wire.far_pointer(1, 0))
    body = struct.pack("<Q", 1 | 2 << 32 | data << 35) + b"\1" * data
    return Content.standalone([head, body])


def test_params_in_a_segment_of_their_own_are_measured_as_they_are():
    """An external client's pycapnp (Cap'n Proto's C++) puts the params' struct
    beside the Call's header and what does not fit that segment (a Data) in a
    segment of its own, reached by a far pointer: the router measured content
    of several segments by every segment of the message, the header's too, and
    refused it.  With a real system at
    external_limits.message_size = "64KiB" (the callee's too), `wsuper call` of
    Data of 65,500 bytes (params of 65,520) failed 'params of 65624 bytes from
    external are more than it may send (limit message_size = 65536)', bytes the
    client never sent, where content in one segment is measured as it is.  Such
    params are measured as they are; one word more is still refused, naming its
    own size."""
    small = R.Limits(message_size=1024)
    router = R.Router({"calc": CALC, "app": None}, limits={"calc": small, "app": small},
                      external=("calc",), external_limits=small, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    outside = client(router)
    for caller in (app, outside):
        caller.send(caller.conn.send_call(caller.grants[0].import_id, CALC, 0,
                                          _far_params(1024))[1])
        assert caller.inbox == []
        (call,) = calc.inbox
        calc.inbox.clear()
        calc.send(calc.conn.send_return(call.answer_id, _far_params(1024)))
        (ret,) = caller.inbox
        caller.inbox.clear()
        assert ret.payload is not None, ret.error
        caller.send(caller.conn.send_call(caller.grants[0].import_id, CALC, 0,
                                          _far_params(1040))[1])
        assert calc.inbox == []
        (ret,) = caller.inbox
        caller.inbox.clear()
        assert ret.payload is None
        assert "of 1032 bytes" in ret.error, ret.error


def test_calls_a_client_cancels_count_to_its_own_in_flight_not_to_the_orphans_all_clients_share():
    """An outside review (reviewer 206): a live client's cancelled calls counted
    against orphans_limit, which every external client shares at a compartment.
    One client calling and cancelling (in_flight 2, orphans_limit 4) filled it in
    two rounds, and every other client's call to calc was refused "overloaded"
    until calc answered them (for as long as calc was busy, up to its call_time).
    They count to the canceller's own in_flight now, until calc answers them,
    and to orphans_limit only once it is gone (as a gone client's calls do)."""
    router = R.Router({"calc": CALC}, external=("calc",), external_limits=R.Limits(in_flight=2))
    calc = start(router, "calc", exports=True)
    c = client(router, "canceller")
    honest = client(router, "honest")
    for _ in range(3):
        qs = []
        for _ in range(2):
            q, data = c.conn.send_call(c.grants[0].import_id, CALC, 0)
            c.send(data)
            qs.append(q)
        for q in qs:
            c.send(c.conn.send_finish(q))
    assert len(calc.inbox) == 2
    refused = [r for r in c.inbox if r.error_type == "overloaded"]
    assert refused and "cancelled" in refused[-1].error and "in_flight" in refused[-1].error
    honest.send(honest.conn.send_call(honest.grants[0].import_id, CALC, 0)[1])
    assert len(calc.inbox) == 3                      # the other client's call goes on
    assert not [r for r in honest.inbox if r.error_type == "overloaded"]
    # the canceller goes: what it cancelled counts to orphans_limit from now on
    c.deliver(router.disconnected(c.pid, "closed"))
    assert router._orphans_at == {calc.pid: 2} and not router._cancelled_of
    for e in calc.inbox[:2]:                         # calc answers them: none left
        calc.send(calc.conn.send_exception(e.answer_id, "call canceled"))
    assert not router._orphans_at and not router._orphans


def test_a_capability_named_three_times_in_one_call_is_held_once_for_the_entry():
    """rpc.capnp counts a reference for each descriptor: a call that passes calc's
    counter three times gives echo an export-table entry of three references.
    The router counted its own hold on a capability exported to a peer only where
    the entry held one reference after the message, so this entry was counted
    nowhere: when echo released its three references, the router let go of the
    counter as if nobody held it (its import at calc released), and app's own
    reference to it failed "a capability of calc that was released".  Held once
    for the entry, the counter stays while app holds it, and goes to calc's
    Release when app lets go too."""
    ECHO = 0xC0FFEE00000000E2
    router = R.Router({"calc": CALC, "echo": ECHO, "app": None})
    calc = start(router, "calc", exports=True)
    echo = start(router, "echo", exports=True)
    app = start(router, "app", [grant("calc", "calc"), grant("echo", "echo")])
    counter, h = _counter_from(router, app, calc, app.grants[0].import_id)
    _q, data = app.conn.send_call(app.grants[1].import_id, ECHO, 0, P.EMPTY,
                                  [P.RemoteRef(h)] * 3)
    app.send(data)
    held = echo.inbox.pop()
    assert len(held.payload.caps) == 3 and len({c.import_id for c in held.payload.caps}) == 1
    echo.send(echo.conn.send_return(held.answer_id))
    echo.send(echo.conn.send_release(held.payload.caps[0].import_id))   # all three
    assert not any(isinstance(e, P.ExportReleased) for e in calc.inbox)
    app.send(app.conn.send_call(h, CALC + 1, 0)[1])
    assert calc.inbox[-1].target is counter
    app.send(app.conn.send_release(h))
    assert P.ExportReleased(counter) in calc.inbox


def test_a_capability_answered_three_times_in_one_return_is_held_once_for_the_entry():
    """The same in a Return: calc answers newCounter naming its new counter three
    times; app's entry for it has three references and is held once by the router
    until app releases them, and calc hears the counter released then, not before."""
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    q, data = app.conn.send_call(app.grants[0].import_id, CALC, 1)
    app.send(data)
    call = calc.inbox.pop()
    counter = object()
    seg = bytearray(struct.pack("<QQ", 1 << 48, wire.cap_pointer(0)))
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([seg]), [counter] * 3))
    ret = app.inbox.pop()
    app.send(app.conn.send_finish(q))
    (h,) = {c.import_id for c in ret.payload.caps}
    for _ in range(2):
        app.send(app.conn.send_call(h, CALC + 1, 0)[1])
        assert calc.inbox[-1].target is counter
    assert not any(isinstance(e, P.ExportReleased) for e in calc.inbox)
    app.send(app.conn.send_release(h))
    assert P.ExportReleased(counter) in calc.inbox


def test_results_clients_keep_unfinished_come_from_one_pool_and_the_biggest_holder_goes():
    """Results returned with capabilities are kept until the caller's Finish, 64 MiB
    a connection: max_connections clients could keep 32 x 64 MiB (and N
    compartments N x, r258).  Beyond each one's own 8 MiB they come from one pool
    for all external clients (another for the compartments): past it, the client
    holding the most of it is cut off, not the one just answered that holds little."""
    router = R.Router({"calc": CALC}, external=("calc",), names=NAMES)
    calc = start(router, "calc", exports=True)
    a, b, c = client(router, "a"), client(router, "b"), client(router, "c")
    words = (4 << 20) // 8
    big = Content.standalone([struct.pack("<Q", words << 32) + bytes(8 * words)])

    def kept(who, n):
        for _ in range(n):          # answered with 4 MiB and a capability, never finished
            who.send(who.conn.send_call(who.grants[0].import_id, CALC, 1)[1])
            (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
            calc.inbox.clear()
            calc.send(calc.conn.send_return(ev.answer_id, big, [object()]))

    kept(a, 15)                     # 60 MiB each: 52 beyond their own, 104 of the 112
    kept(b, 14)
    kept(c, 3)                      # 12: 4 beyond, 108 in all
    assert all(p.pid in router.peers for p in (a, b, c))
    kept(b, 1)
    kept(c, 2)                      # 20: 12 beyond, past the pool: a holds the most
    assert a.pid not in router.peers and b.pid in router.peers and c.pid in router.peers
    (close,) = [e for e in calc.effects if isinstance(e, fx.Close)]
    assert close.peer == a.pid and "the most of any external client" in close.reason \
        and f"external clients together may hold at most {R.KEPT_POOL_BYTES}" in close.reason


def test_answers_to_clients_past_their_own_kept_results_do_not_look_at_every_peer(
        monkeypatch):
    """Clients that never send Finish, answered past their own 8 MiB again and
    again: each answer looked at every peer of their kind (O(peers) an answer, for
    as long as they kept going).  The others are looked at only once the pool may
    be full; the pool still decides then, as in the test above."""
    router = R.Router({"calc": CALC}, external=("calc",), names=NAMES)
    calc = start(router, "calc", exports=True)
    idle = [client(router, f"idle{i}") for i in range(50)]
    a, b, c = client(router, "a"), client(router, "b"), client(router, "c")
    looked = []
    real = R.pool_shed
    monkeypatch.setattr(R, "pool_shed", lambda *args: looked.append(1) or real(*args))
    words = (4 << 20) // 8
    big = Content.standalone([struct.pack("<Q", words << 32) + bytes(8 * words)])

    def kept(who, n):
        for _ in range(n):
            who.send(who.conn.send_call(who.grants[0].import_id, CALC, 1)[1])
            (ev,) = [e for e in calc.inbox if isinstance(e, P.CallReceived)]
            calc.inbox.clear()
            calc.send(calc.conn.send_return(ev.answer_id, big, [object()]))

    kept(a, 15)                     # 52 MiB beyond their own each, 104 of the 112
    kept(b, 14)
    kept(c, 3)
    kept(b, 1)
    assert looked == [] and all(p.pid in router.peers for p in (a, b, c))
    kept(c, 2)                      # past the pool: looked at, a holds the most
    assert looked and a.pid not in router.peers and b.pid in router.peers
    assert all(p.pid in router.peers for p in idle + [c])


def test_overdue_refusal_refuses_the_share_that_filled_the_bound_not_every_caller():
    """The pure decision behind the overdue bound (r276): external clients together
    take at most half of it; a compartment is refused only past its own share and
    while all the callee's overdue calls are at the limit; a caller of no share only
    at the limit."""
    ext, app = ("external",), ("compartment", "app")
    assert R.overdue_own(1024, 16) == 32 and R.overdue_own(1024, 2000) == 1
    assert R.overdue_refusal(1024, 16, 511, ext, 511) is None
    assert R.overdue_refusal(1024, 16, 512, ext, 512) == ("external", 512)
    # external clients filled their half, and more is theirs than anyone's: a
    # compartment holding none there, or its own share, is not refused for it
    assert R.overdue_refusal(1024, 16, 1024, app, 0) is None
    assert R.overdue_refusal(1024, 16, 1024, app, 31) is None
    assert R.overdue_refusal(1024, 16, 1024, app, 32) == ("callee", 32)
    # beyond its own share, a compartment may add to the pool under the limit
    assert R.overdue_refusal(1024, 16, 1023, app, 900) is None
    assert R.overdue_refusal(1024, 16, 1024, None, 0) == ("callee", 0)
    assert R.overdue_refusal(1024, 16, 1023, None, 0) is None
    assert R.overdue_refusal(1, 1, 1, ext, 1) == ("external", 1)
    assert R.overdue_refusal(1, 1, 0, ext, 0) is None


def test_calls_cancelled_at_a_busy_callee_get_only_their_own_callers_refused():
    """r276: the overdue bound was one for every caller of a callee: external
    clients that sent calc calls and cancelled them while it did not answer filled
    it, and every other caller's calls to calc were refused 'overloaded' until it
    answered, compartments' too.  External clients together may fill half of it,
    then only theirs are refused; a compartment that fills the rest is refused
    itself, past its own share, and the others' calls still reach calc; answered,
    everyone's calls reach it again."""
    router = R.Router({"calc": CALC, "app": None, "app2": None}, external=("calc",),
                      overdue_limit=8, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [grant("calc", "calc")])
    app2 = start(router, "app2", [grant("calc", "calc")])

    def cancelled(caller, n):            # n calls, each cancelled (Finish) once sent
        for _ in range(n):
            q, data = caller.conn.send_call(caller.grants[0].import_id, CALC, 0)
            caller.send(data)
            if q in caller.conn.questions and not caller.conn.questions[q].returned:
                caller.send(caller.conn.send_finish(q))

    for c in [client(router, f"flood{i}") for i in range(3)]:
        cancelled(c, 3)
        refused = [r for r in c.inbox if r.error_type == "overloaded"]
        if refused:
            assert "calls of external clients cancelled there" in refused[-1].error, \
                refused[-1].error
    assert router.peers[calc.pid].conn.overdue == 4          # half of 8: no more
    honest = client(router, "honest")
    honest.send(honest.conn.send_call(honest.grants[0].import_id, CALC, 0)[1])
    (ret,) = honest.inbox
    assert ret.error_type == "overloaded" and "half of 8" in ret.error, ret.error
    calc.inbox.clear()
    # app fills the rest: past the 8 and its own share, it alone is refused
    cancelled(app, 6)
    assert router.peers[calc.pid].conn.overdue == 8
    refused = [r for r in app.inbox if r.error_type == "overloaded"]
    assert len(refused) == 2 and "4 of them app's, past its own 1" in refused[-1].error, \
        refused[-1].error
    calc.inbox.clear()
    q, data = app2.conn.send_call(app2.grants[0].import_id, CALC, 0)
    app2.send(data)
    (call,) = calc.inbox                                      # it reaches calc
    calc.send(calc.conn.send_return(call.answer_id, Content.standalone([bytes(8)])))
    assert app2.inbox[-1].payload is not None
    # calc answers the cancelled calls: the shares are free again
    for a in list(calc.conn.answers):
        if calc.conn.answers[a].finished:
            calc.send(calc.conn.send_exception(a, "call canceled"))
    assert router.peers[calc.pid].conn.overdue == 0
    assert not router._overdue_by and not router._overdue_of
    app.inbox.clear()
    calc.inbox.clear()
    app.send(app.conn.send_call(app.grants[0].import_id, CALC, 0)[1])
    assert len(calc.inbox) == 1 and app.inbox == []
