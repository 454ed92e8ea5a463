"""The reference monitor without processes: Router + Connections playing the engines."""
import pytest
import struct

from capnp_schemas import protocol as P, wire
from capnp_schemas.protocol import Content
from supervisor import router as R

CALC = 0xC0FFEE0000000001


class FakeEngine:
    """The engine side of the protocol, driven by hand."""

    def deliver(self, effects):
        for e in effects:
            if isinstance(e, R.Send):
                FakeEngine.all[e.peer].feed(e.data)
            else:
                self.effects.append(e)

    def feed(self, data):
        for ev in self.conn.receive(data):
            if isinstance(ev, P.BootstrapRequested):
                self.send(self.conn.send_return(ev.answer_id, Content.capability(0), [self.control]))
            elif isinstance(ev, P.CallReceived) and ev.target is self.control:
                segs = ev.payload.content.message()
                elems = wire.struct_list_elements(segs, wire.struct_pointer_field(segs, (0, 0), 0))
                for i, (s, start, d, p) in enumerate(elems):
                    idx = wire.capability_index(segs, (s, start + d + 1))
                    self.grants[i] = ev.payload.caps[idx]
                seg = bytearray(struct.pack("<QQQ", (1 << 32) | (1 << 48), 1, 0))
                caps = []
                if self.exports:
                    wire.set_word(seg, 2, wire.cap_pointer(0))
                    caps = [self.main]
                self.send(self.conn.send_return(ev.answer_id, Content.standalone([seg]), caps))
            elif isinstance(ev, (P.CallReceived, P.ReturnReceived, P.ExportReleased)):
                self.inbox.append(ev)

    def send(self, data):
        self.deliver(self.router.receive(self.pid, data))


FakeEngine.all = {}


def start(router, name, grants=(), exports=False):
    e = FakeEngine.__new__(FakeEngine)
    e.router, e.name, e.exports = router, name, exports
    e.conn = P.Connection(name)
    e.control, e.main = object(), object()
    e.grants, e.inbox, e.effects = {}, [], []
    e.pid, effects = router.add_engine(name, list(grants))
    FakeEngine.all[e.pid] = e
    e.deliver(effects)
    return e


def test_grant_routes_calls_and_results_between_compartments():
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [("calc", "compartment", "calc")])
    assert R.Started("calc", True) in calc.effects and R.Started("app", True) in app.effects
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
    app = start(router, "app", [("calc", "compartment", "calc")])
    _q, data = app.conn.send_call(app.grants[0].import_id, 0x1234, 0)
    app.send(data)
    assert calc.inbox == []
    (ret,) = app.inbox
    assert ret.error_type == "unimplemented" and "does not implement" in ret.error


def test_forged_export_id_aborts_only_that_connection():
    router = R.Router({"calc": CALC, "app": None, "evil": None}, audit=True)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [("calc", "compartment", "calc")])
    evil = start(router, "evil")
    m = P.rpc.Message.new_message()
    c = m.init("call")
    c.target.importedCap = 999
    c.sendResultsTo.caller = None
    effects = router.receive(evil.pid, wire.frame(m.to_segments()))
    assert any(isinstance(e, R.Close) and e.peer == evil.pid for e in effects)
    (record,) = [e.record for e in effects if isinstance(e, R.Audit)]
    assert record["peer"] == "evil" and record["event"] == "connection aborted"
    assert "export id 999 was never issued" in record["reason"]
    # app still reaches calc
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 0)
    app.send(data)
    assert len(calc.inbox) == 1


def test_callee_crash_fails_calls_in_flight_promptly():
    router = R.Router({"calc": CALC, "app": None})
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [("calc", "compartment", "calc")])
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
    app = start(router, "app", [("calc", "compartment", "calc")])
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


def test_call_time_fails_slow_calls_and_late_answers_are_dropped():
    now = [0.0]
    router = R.Router({"calc": CALC, "app": None},
                      limits={"calc": R.Limits(call_time=2.0)}, clock=lambda: now[0])
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [("calc", "compartment", "calc")])
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
    app = start(router, "app", [R.GrantSpec("calc", "compartment", "calc", allow)])
    h = app.grants[0].import_id
    _q, data = app.conn.send_call(h, CALC, 2)           # sumTo: not allowed
    effects = router.receive(app.pid, data)
    app.deliver(effects)
    assert calc.inbox == []
    (ret,) = app.inbox
    assert "app.calc: Calc.sumTo is not allowed (allow = [Calc.add, Calc.newCounter])" in ret.error
    assert any(isinstance(e, R.Denied) for e in effects)
    app.inbox.clear()
    counter, c = _counter_from(router, app, calc, h)
    _q, data = app.conn.send_call(c, COUNTER, 0)        # Counter is not restricted
    app.send(data)
    assert calc.inbox[-1].target is counter


def test_allow_list_naming_another_interface_restricts_it_too():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [R.GrantSpec("calc", "compartment", "calc",
                                            frozenset({(CALC, 1), (COUNTER, 1)}))])
    _counter, c = _counter_from(router, app, calc, app.grants[0].import_id)
    _q, data = app.conn.send_call(c, COUNTER, 0)        # inc is not in the list
    app.send(data)
    assert "app.calc>Calc.newCounter: Counter.inc is not allowed" in app.inbox[-1].error


def test_revocation_kills_the_grant_what_came_through_it_and_calls_in_flight():
    router = R.Router({"calc": CALC, "app": None}, names=NAMES)
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [R.GrantSpec("calc", "compartment", "calc", None, True)])
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
    app = start(router, "app", [R.GrantSpec("calc", "compartment", "calc", None, True)])
    observer = object()
    _q, data = app.conn.send_call(app.grants[0].import_id, CALC, 2, caps=[observer])
    app.send(data)
    call = calc.inbox.pop()
    passed = call.payload.caps[0].import_id
    app.deliver(router.revoke("app.calc"))
    _q, data = calc.conn.send_call(passed, 0xC0FFEE0000000003, 0)   # calc calls it back
    calc.send(data)
    assert "was revoked" in calc.inbox.pop().error
    assert not any(isinstance(e, P.CallReceived) and e.target is observer for e in app.inbox)


def test_audit_records_every_call_with_outcome_and_duration():
    now = [10.0]
    router = R.Router({"calc": CALC, "app": None}, names=NAMES, audit=True, clock=lambda: now[0])
    calc = start(router, "calc", exports=True)
    app = start(router, "app", [R.GrantSpec("calc", "compartment", "calc",
                                            frozenset({(CALC, 0)}))])
    h = app.grants[0].import_id
    _q, data = app.conn.send_call(h, CALC, 0)
    app.send(data)
    now[0] = 10.25
    calc.send(calc.conn.send_return(calc.inbox.pop().answer_id))
    _q, data = app.conn.send_call(h, CALC, 2)
    app.send(data)
    records = [e.record for e in calc.effects + app.effects if isinstance(e, R.Audit)]
    assert records[0] == {"time": 10.0, "caller": "app", "capability": "app.calc",
                          "interface": "Calc", "method": "add", "outcome": "returned",
                          "duration_ms": 250.0}
    assert records[1]["method"] == "sumTo" and records[1]["outcome"] == "denied"
    assert "not allowed" in records[1]["reason"]


CLOCK, RANDOM = R.CLOCK_ID, R.RANDOM_ID


def _read_result(ret, field_struct, name):
    return getattr(field_struct.from_segments(wire.unframe(ret.payload.content.single_segment_copy())), name)


def test_clock_and_random_are_capabilities_with_injected_sources():
    router = R.Router({"app": None}, wall_ns=lambda: 1_700_000_000_000_000_000,
                      monotonic_ns=lambda: 42, entropy=lambda n: b"\x07" * n)
    app = start(router, "app", [("clock", "host", "clock"), ("random", "host", "random")])
    clock, rand = app.grants[0].import_id, app.grants[1].import_id
    app.send(app.conn.send_call(clock, CLOCK, 0)[1])
    app.send(app.conn.send_call(clock, CLOCK, 1)[1])
    params = R.RandomParams.new_message(count=5)
    app.send(app.conn.send_call(rand, RANDOM, 0, Content.standalone(params.to_segments()))[1])
    big = R.RandomParams.new_message(count=R.RANDOM_MAX_BYTES + 1)
    app.send(app.conn.send_call(rand, RANDOM, 0, Content.standalone(big.to_segments()))[1])
    wall, mono, data, refused = app.inbox
    assert _read_result(wall, R.ClockResults, "ns") == 1_700_000_000_000_000_000
    assert _read_result(mono, R.ClockResults, "ns") == 42
    assert _read_result(data, R.RandomResults, "data") == b"\x07" * 5
    assert "at most 65536 bytes per call" in refused.error


def test_quotas_on_a_grant_uses_expiry_and_rate():
    now = [0.0]
    router = R.Router({"app": None}, clock=lambda: now[0], names={CLOCK: ("Clock", {0: "wall"})})
    app = start(router, "app", [
        R.GrantSpec("twice", "host", "clock", max_uses=2),
        R.GrantSpec("brief", "host", "clock", expires_after=5),
        R.GrantSpec("slow", "host", "clock", calls_per_second=1)])
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


def _fs_params(iface, method, **fields):
    from supervisor.router import _DIR_STRUCTS, _FILE_STRUCTS
    structs = _DIR_STRUCTS if iface == R.DIRECTORY_ID else _FILE_STRUCTS
    return Content.standalone(structs[method][0].new_message(**fields).to_segments())


def test_a_file_opened_through_a_read_only_directory_grant_is_read_only(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    router = R.Router({"app": None})
    app = start(router, "app", [R.GrantSpec("data", "host", "directory", path=str(tmp_path),
                                            read_only=True)])
    d = app.grants[0].import_id
    app.send(app.conn.send_call(d, R.DIRECTORY_ID, 0,
                                _fs_params(R.DIRECTORY_ID, "open", path="notes.txt",
                                           mode="readWrite"))[1])
    assert "is read-only" in app.inbox.pop().error
    app.send(app.conn.send_call(d, R.DIRECTORY_ID, 0,
                                _fs_params(R.DIRECTORY_ID, "open", path="notes.txt",
                                           mode="read"))[1])
    f = app.inbox.pop().payload.caps[0].import_id
    app.send(app.conn.send_call(f, R.FILE_ID, 0,
                                _fs_params(R.FILE_ID, "read", offset=0, count=100))[1])
    assert _read_result(app.inbox.pop(), R._FILE_STRUCTS["read"][1], "data") == b"hello"
    app.send(app.conn.send_call(f, R.FILE_ID, 1,
                                _fs_params(R.FILE_ID, "write", offset=0, data=b"X"))[1])
    assert "is read-only" in app.inbox.pop().error
    app.send(app.conn.send_call(d, R.DIRECTORY_ID, 0,
                                _fs_params(R.DIRECTORY_ID, "open", path="../x", mode="read"))[1])
    assert "contains '..'" in app.inbox.pop().error
    assert (tmp_path / "notes.txt").read_text() == "hello"


def test_an_allow_list_on_a_directory_applies_to_the_files_it_opens(tmp_path):
    (tmp_path / "log.txt").write_text("")
    names = {R.DIRECTORY_ID: ("Directory", dict(enumerate(R.DIRECTORY_METHODS))),
             R.FILE_ID: ("File", dict(enumerate(R.FILE_METHODS)))}
    router = R.Router({"app": None}, names=names)
    allow = frozenset({(R.DIRECTORY_ID, 0), (R.FILE_ID, 2)})       # open; File.append
    app = start(router, "app", [R.GrantSpec("data", "host", "directory", allow=allow,
                                            path=str(tmp_path))])
    d = app.grants[0].import_id
    app.send(app.conn.send_call(d, R.DIRECTORY_ID, 0,
                                _fs_params(R.DIRECTORY_ID, "open", path="log.txt",
                                           mode="readWrite"))[1])
    f = app.inbox.pop().payload.caps[0].import_id
    app.send(app.conn.send_call(f, R.FILE_ID, 2, _fs_params(R.FILE_ID, "append", data=b"ok"))[1])
    assert app.inbox.pop().error is None
    app.send(app.conn.send_call(f, R.FILE_ID, 3, _fs_params(R.FILE_ID, "truncate", size=0))[1])
    assert "File.truncate is not allowed" in app.inbox.pop().error
    assert (tmp_path / "log.txt").read_text() == "ok"


def test_environment_grant_shows_only_what_was_granted(monkeypatch):
    monkeypatch.setenv("SUPERVISOR_SECRET", "hunter2")
    router = R.Router({"app": None})
    app = start(router, "app", [R.GrantSpec("env", "host", "environment", args=("-v", "x"),
                                            vars=(("MODE", "fast"),))])
    e = app.grants[0].import_id
    env = R._ENV_STRUCTS
    app.send(app.conn.send_call(e, R.ENVIRONMENT_ID, 0)[1])
    assert list(_read_result(app.inbox.pop(), env["args"][1], "args")) == ["-v", "x"]
    app.send(app.conn.send_call(e, R.ENVIRONMENT_ID, 1)[1])
    got = _read_result(app.inbox.pop(), env["vars"][1], "vars")
    assert [(v.name, v.value) for v in got] == [("MODE", "fast")]
    for name, expected in (("MODE", ("fast", True)), ("SUPERVISOR_SECRET", ("", False))):
        params = Content.standalone(env["get"][0].new_message(name=name).to_segments())
        app.send(app.conn.send_call(e, R.ENVIRONMENT_ID, 2, params)[1])
        r = env["get"][1].from_segments(wire.unframe(app.inbox.pop().payload.content.single_segment_copy()))
        assert (r.value, r.present) == expected
