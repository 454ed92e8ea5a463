"""The probe registry, the engine's half of the probes and the trace file, without
processes: hostile specs and hostile engine answers, the consistency rule,
bounds, and the trace-event format."""

import pytest

from compartments.instrument import COUNT, EVENTS, Sites
from compartments.probing import ENTER, EVENT, EXIT, HOSTCALL, STORE, EngineProbes
from supervisor import probes as P, trace

SITES = Sites(points=("functions", "blocks", "stores"), kinds=(0, 1, 1, 2, 0, 1, 2),
              functions=(3, 3, 3, 3, 4, 4, 4), names={3: "alpha", 4: "beta"}, counters=8,
              imported=3)


def _registry():
    r = P.Registry(lambda: 0, {"c": ("functions", "blocks", "stores")})
    r.sites["c"] = SITES
    return r


def test_specs_from_a_command_line_are_checked():
    for args, why in ((("a b", "calls"), "not allowed"), (("a", "nope"), "unknown point"),
                      (("a", "functions", ["x"] * 65), "at most 64"),
                      (("a", "functions", ["\x1b[2J"]), "printable"),
                      (("a", "functions", ["#1x"]), "an index is"),
                      (("a", "calls", ["f"]), "functions applies to"),
                      (("a", "calls", (), "yes"), "true or false")):
        with pytest.raises(P.ProbeError, match=why):
            P.spec("c", *args)
    assert P.spec("c", "a", "functions", "alp*,#4").functions == ("alp*", "#4")


def test_flags_are_the_union_of_the_probes():
    r = _registry()
    r.add(P.spec("c", "f", "functions", ["alpha"]), SITES)
    r.add(P.spec("c", "e", "functions", ["#4"], events=True), SITES)
    r.add(P.spec("c", "b", "blocks", ["beta"]), SITES)
    flags, hostcalls = r.flags("c")
    assert flags == bytes([COUNT, 0, 0, 0, COUNT | EVENTS, COUNT, 0]) and not hostcalls
    r.remove("c", "e")
    assert r.flags("c")[0] == bytes([COUNT, 0, 0, 0, 0, COUNT, 0])
    with pytest.raises(P.ProbeError, match="no function of c matches"):
        r.add(P.spec("c", "x", "stores", ["gamma*"]), SITES)
    with pytest.raises(P.ProbeError, match="not loaded with functions probe sites"):
        P.Registry(lambda: 0).add(P.spec("d", "x", "functions"), None)


def test_hostile_engine_events_are_skipped():
    r = _registry()
    r.add(P.spec("c", "s", "stores", events=True), SITES)
    r.add(P.spec("c", "h", "hostcalls", events=True), SITES)
    sub = r.subscribe(P.Subscriber(["c"]))
    good = EVENT.pack(STORE, 3, 10, 4096, 4) + EVENT.pack(HOSTCALL, 1, 11, 5000, 0)
    bad = (EVENT.pack(STORE, 99, 1, 1, 4) + EVENT.pack(STORE, 3, 1, 1, 1 << 40)
           + EVENT.pack(77, 3, 1, 1, 1) + EVENT.pack(HOSTCALL, 10 ** 6, 1, 1, 1)
           + EVENT.pack(ENTER, -1 & 0xffffffff, 1, 1, 1) + b"\x01\x02\x03")
    r.engine_events("c", good + bad, dropped=5)
    got, dropped = sub.take(100)
    assert [(e["kind"], e["name"]) for e in got] == [("store", "alpha"),
                                                     ("hostcall", "wsuper.call")]
    summary = {p["name"]: p for p in r.list("c")}
    assert summary["s"]["bytes"] == 4 and summary["s"]["range"] == [4096, 4100]
    assert summary["s"]["dropped"] == 5 and summary["h"]["counts"] == {"wsuper.call": 1}
    r.counters("c", b"\x00" * 7)                           # the wrong size: ignored
    with pytest.raises(P.ProbeError):
        P.parse_sites('{"points": [], "kinds": "0009", "functions": [1, 2], "names": {}, '
                      '"counters": 8}')
    with pytest.raises(P.ProbeError):
        P.parse_sites("{" * 100000)


def test_a_bulk_write_reaches_a_stores_probe_and_its_sizes_stay_bounded():
    """memory.fill, memory.copy and memory.init are stores of their length (up to
    4 GiB - 1): one of more than 16 bytes was skipped as malformed, so a probe never
    saw memset or memcpy.  Their sizes are rows by the power of two at or above
    them: any number of lengths is a bounded table."""
    r = _registry()
    r.add(P.spec("c", "s", "stores", events=True), SITES)
    sub = r.subscribe(P.Subscriber(["c"]))
    sizes = [4, 16, 17, 1000, 4096, (1 << 32) - 1] + list(range(20, 5000, 7))
    r.engine_events("c", b"".join(EVENT.pack(STORE, 3, 10, 8192, n) for n in sizes)
                    + EVENT.pack(STORE, 3, 10, 8192, 1 << 32))      # more than any length
    got, _ = sub.take(10_000)
    assert [e["size"] for e in got] == sizes
    summary = r.list("c")[0]
    assert summary["bytes"] == sum(sizes)
    assert summary["range"] == [8192, 8192 + (1 << 32) - 1]
    assert summary["sizes"][4] == 1 and summary["sizes"][16] == 1
    assert summary["sizes"][32] == 3 and summary["sizes"][1 << 32] == 1     # 17, 20, 27
    assert sum(summary["sizes"].values()) == len(sizes) and len(summary["sizes"]) <= 32
    # the engine's hook gets the length as wasm's i32, signed: 3 GiB is no -1 GiB
    engine = EngineProbes(SITES)
    engine.set(bytes([EVENTS]) * len(SITES), False)
    engine.store(3, 8192, (3 << 30) - (1 << 32))
    (event,) = EVENT.iter_unpack(engine.collect()[1])
    assert event[4] == 3 << 30


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000, '{"points": ' + "[" * 50_000,
                                  '{"names": {"1": ' + "[" * 50_000 + "]" * 50_000 + "}}"])
def test_probe_sites_nested_deeper_than_python_recurses_are_malformed_not_a_crash(text):
    """A taken-over engine answered Engine.describe with JSON nested 100,000 deep:
    json.loads raised RecursionError, which no one caught, and the task that
    added a declared probe ended the supervisor and every compartment (an
    outside review).  Whatever an engine's JSON makes raise is a malformed
    answer."""
    with pytest.raises(P.ProbeError, match="malformed"):
        P.parse_sites(text)


def test_a_fault_while_adding_a_declared_probe_is_said_and_not_fatal():
    """The prober's own tasks (declared probes, background collects) run in the
    supervisor's nursery: an exception escaping one would stop the system."""
    import trio
    from supervisor import prober

    said = []
    sup = type("Sup", (), {"say": lambda self, text, c=None: said.append(text)})()
    p = object.__new__(prober.Prober)
    p.sup = sup

    async def add(s, by):
        raise RuntimeError("boom")

    async def collect(name):
        raise RecursionError("deep")

    p.add, p._collect = add, collect
    spec = P.spec("calc", "f", "functions")
    trio.run(p._declare, spec)
    trio.run(p._quiet_collect, "calc")
    assert said == ["cannot add declared probe calc.f: internal error (RuntimeError: boom)",
                    "cannot collect calc's probes: internal error (RecursionError: deep)"]


def test_sinks_are_bounded_and_count_what_they_drop():
    sub = P.Subscriber(limit=3)
    for i in range(10):
        sub.put({"i": i})
    got, dropped = sub.take(100)
    assert [e["i"] for e in got] == [0, 1, 2] and dropped == 7
    calls = P.CallProbes(lambda: 5)
    calls.watch.add("a")
    for k in range(P.MAX_OPEN_CALLS + 3):
        calls.open(k, "a", "g", "b", "I.m")
    assert calls.dropped == 3
    calls.open("x", "c", "g", "d", "I.m")                  # neither side watched
    calls.close("x", "returned")
    assert all(e["caller"] == "a" for e in calls.done)


def test_an_exit_is_reported_only_after_its_entry():
    p = EngineProbes(SITES)
    p.set(bytes([EVENTS, 0, 0, 0, EVENTS, 0, 0]), False)
    p.hit(0, 1)            # alpha was running when the probe came on: its exit is dropped
    p.hit(4, 0)
    p.hit(0, 0)
    p.hit(0, 1)
    p.hit(4, 1)
    p.hit(4, 1)            # a second exit of beta: no entry for it
    kinds = [(k, s) for k, s, *_ in EVENT.iter_unpack(p.collect()[1])]
    assert kinds == [(ENTER, 4), (ENTER, 0), (EXIT, 0), (EXIT, 4)]
    p.hit(0, 0)
    p.hit(4, 0)
    p.unwind(0)            # a trap: both close, innermost first, marked unwound
    events = list(EVENT.iter_unpack(p.collect()[1]))
    assert [(k, s, b) for k, s, _t, _a, b in events] == [(ENTER, 0, 0), (ENTER, 4, 0),
                                                         (EXIT, 4, 1), (EXIT, 0, 1)]
    with pytest.raises(ValueError):
        p.set(b"\x01", False)
    with pytest.raises(ValueError):
        p.set(bytes([8] * 7), False)


def test_the_engine_buffer_is_bounded():
    p = EngineProbes(SITES)
    p.set(bytes([EVENTS] * 7), False)
    for _ in range(70_000):
        p.hit(1, 0)
    _counters, events, dropped = p.collect()
    assert len(events) // EVENT.size + dropped == 70_000 and dropped > 0


def test_the_chrome_trace_links_caller_and_callee():
    events = [{"kind": "call", "id": 1, "caller": "a", "callee": "b", "grant": "a.b",
               "name": "I.m", "ts_ns": 1000, "dur_ns": 5000, "outcome": "returned"},
              {"kind": "call", "id": 2, "caller": "b", "callee": "host:log", "grant": "b.log",
               "name": "Log.write", "ts_ns": 2000, "dur_ns": 1000, "outcome": "returned"},
              {"kind": "enter", "compartment": "b", "name": "f\x1b[2J", "ts_ns": 1500},
              {"kind": "exit", "compartment": "b", "name": "f\x1b[2J", "ts_ns": 4000},
              {"kind": "call", "ts_ns": "garbage"}]
    t = trace.chrome(events)
    ev = t["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in ev if e.get("name") == "process_name"}
    assert set(names.values()) == {"a", "b", "host capabilities"}
    flows = [e for e in ev if e["ph"] in "sf"]
    assert [(e["ph"], names[e["pid"]], e["id"]) for e in flows] == [
        ("s", "a", 1), ("f", "b", 1), ("s", "b", 2), ("f", "host capabilities", 2)]
    assert all("\x1b" not in e["name"] for e in ev)
    x = [e for e in ev if e["ph"] == "X"]
    assert x[0]["ts"] == 0 and x[0]["dur"] == 5.0


def _counts(*values):
    import struct
    return struct.pack(f"<{len(values)}q", *values)


def test_a_new_probe_counts_from_a_collect_sent_after_its_flags_never_from_an_older_one():
    """An outside review: a probe whose flags had to wait for a busy guest (or whose
    add met a collect already in flight) never got a baseline, and showed every hit
    an earlier probe on the same sites had counted (11 hits where it saw 1)."""
    r = _registry()
    a = r.add(P.spec("c", "a", "functions", ["beta"]), SITES)
    sent = r.pushed("c")
    r.counters("c", _counts(0, 0, 0, 0, 0, 0, 0), sent)
    r.counters("c", _counts(0, 0, 0, 0, 10, 0, 0), sent)           # a counts 10 entries
    assert r.list("c")[0]["count"] == 10
    r.remove("c", "a")
    r.pushed("c")                                  # beta's site is off: the counter stays
    b = r.add(P.spec("c", "b", "functions", ["beta"]), SITES)
    before = r.pushes["c"]                         # a collect sent before b's flags ...
    r.pushed("c")
    r.counters("c", _counts(0, 0, 0, 0, 10, 0, 0), before)         # ... answered after
    assert b.baseline is None and r.list("c")[0]["count"] == 0
    r.counters("c", _counts(0, 0, 0, 0, 11, 0, 0), r.pushes["c"])  # the first after them
    r.counters("c", _counts(0, 0, 0, 0, 12, 0, 0), r.pushes["c"])
    assert b.baseline[4] == 11 and r.list("c")[0]["count"] == 1
    assert a.on_after == 1 and b.on_after == 3


def _stand_in_prober():
    """A Prober of a stand-in supervisor with one instrumented compartment "c" whose
    engine is peer 1 (tests set `_engine`): (the prober, its supervisor, the lines the
    supervisor said)."""
    from supervisor import prober
    said = []
    comp = type("Comp", (), {"instrument": ("functions",), "probes": ()})()
    sup = type("Sup", (), {})()
    sup.system = type("System", (), {"compartments": {"c": comp}})()
    sup._peer_of, sup._ready_peer, sup.audit = {"c": 1}, {"c": 1}, None
    sup.say = lambda text, c=None: said.append(text)
    p = object.__new__(prober.Prober)
    p.sup, p._collecting, p._incarnation, p._traces = sup, {}, {}, 0
    p._unanswered, p._answered_late = {}, {}
    p.registry = P.Registry(lambda: 0, {"c": ("functions",)})
    return p, sup, said


@pytest.mark.parametrize("restart_during", [None, "describe", "push", "push-lost", "removed"])
def test_a_probe_added_while_its_compartment_restarts_is_refused_not_said_added(
        restart_during):
    """An outside review: a compartment that restarted while `wsuper probe add` waited
    for its engine got the probe into its new engine's registry with the old one's
    sites (its flags never pushed), or lost it to the restart while the answer said
    it was added.  Now the add says the compartment restarted (or that another
    request removed the probe meanwhile), nothing of it is left in the registry, and
    the audit, which records the probe as it enters the registry, records it leaving;
    without a restart it is added."""
    import json
    import trio
    from compartments import probing
    from supervisor import prober

    p, sup, said = _stand_in_prober()

    def restart():
        sup._peer_of["c"] = sup._ready_peer["c"] = sup._peer_of["c"] + 1
        p.started("c")

    async def engine(name, method, values=None, timeout=prober.ENGINE_TIMEOUT):
        if method == probing.DESCRIBE:
            if restart_during == "describe":
                restart()
            return {"sites": json.dumps(SITES.to_json())}
        if method == probing.PROBE and restart_during == "removed":
            p.registry.remove("c", "f")          # another request removes it meanwhile
        elif method == probing.PROBE and restart_during and restart_during.startswith("push"):
            restart()
            if restart_during == "push-lost":
                raise P.ProbeError("c: engine gone")
        return {"counters": b"", "events": b"", "dropped": 0}
    p._engine = engine
    spec = P.spec("c", "f", "functions", ["alpha"])
    if restart_during is None:
        assert trio.run(p.add, spec)["name"] == "f"
        assert list(p.registry.probes["c"]) == ["f"]
        return
    why = "c.f was removed while it was being added" if restart_during == "removed" \
        else "c restarted while the probe was being added"
    with pytest.raises(P.ProbeError, match=why):
        trio.run(p.add, spec)
    assert not p.registry.probes.get("c")
    # the audit says what the registry held: a probe said added is said dropped after
    added = sum("probe added" in t for t in said)
    assert added == (restart_during != "describe")
    assert added == sum("dropped by a restart" in t for t in said) + (restart_during == "removed")


def test_removing_a_probe_from_a_compartment_whose_engine_is_gone_removes_it_and_says_so():
    """An outside review: `wsuper probe c remove f` after c's engine died (restart =
    "never", or while it waits to restart) answered "c: its engine is not running",
    exit 1, while the probe had left the registry, and no 'probe removed' was
    audited.  No engine runs its flags any more: the removal is done, and said."""
    import trio
    from compartments import probing
    from supervisor import prober

    p, sup, said = _stand_in_prober()
    p.registry.sites["c"] = SITES
    p.registry.add(P.spec("c", "f", "functions", ["alpha"]), SITES)

    async def engine(name, method, values=None, timeout=prober.ENGINE_TIMEOUT):
        assert method in (probing.PROBE, probing.COLLECT)
        raise P.ProbeError("c: its engine is not running")
    p._engine = engine
    answer = trio.run(prober.Prober.admin, p, {"compartment": "c", "action": "remove",
                                                 "name": "f"})
    assert answer["ok"] and answer["probe"]["name"] == "f"
    assert not p.registry.probes["c"]
    assert said == ["probe removed: c.f (functions alpha) by operator"]


def test_a_calls_probe_counts_only_the_calls_begun_after_it_came():
    """An outside review: the router's call records wait up to a poll to be taken;
    a calls probe added meanwhile (on the new engine of a compartment that had just
    restarted, say) counted calls that had begun, and even ended, before it: the
    old engine's calls failed by its death among them."""
    now = [100]
    r = P.Registry(lambda: now[0])
    old = r.add(P.spec("c", "served", "calls"))
    r.calls.open(("k", 1), "app", "app.c", "c", "Calc.add")      # begins at 100
    now[0] = 150
    r.calls.close(("k", 1), "failed", "compartment c is gone")  # its engine died
    r.restarted("c")                                            # ... and a new one came
    now[0] = 200
    new = r.add(P.spec("c", "mine", "calls"))
    r.calls.open(("k", 2), "app", "app.c", "c", "Calc.add")      # begins at 200
    now[0] = 210
    r.calls.close(("k", 2), "returned")
    r.take_calls()
    # the failed call is the old probe's, which saw it (taken at the restart); the
    # new one counts only the call begun after it came
    assert old.events == 1 and dict(old.failed) == {"in app Calc.add": 1}
    assert new.events == 1
    assert dict(new.counts) == {"in app Calc.add": 1}


def test_a_list_while_another_collect_is_under_way_waits_and_collects_again():
    """A collect that came while another was under way (the periodic poll's) returned
    at once: `wsuper probe list` then showed the counts from before the calls just
    made (0 for a probe just added; seen in the full suite, where the poll is busy).
    Collects of one compartment now take turns, and each asks the engine itself."""
    import json
    import trio
    import trio.testing
    from compartments import probing

    p, _sup, _said = _stand_in_prober()
    hits = iter([0, 0, 5])                 # the add's baseline, the poll's, the list's
    poll_may_answer = trio.Event()
    asked = []

    async def engine(name, method, values=None, timeout=None):
        if method == probing.DESCRIBE:
            return {"sites": json.dumps(SITES.to_json())}
        if method == probing.COLLECT:
            asked.append("collect")
            n = next(hits)
            if len(asked) == 2:            # the poll's: answered only later
                await poll_may_answer.wait()
            return {"counters": _counts(0, 0, 0, 0, n, 0, 0), "events": b"", "dropped": 0}
        return {"counters": b"", "events": b"", "dropped": 0}
    p._engine = engine

    async def main():
        await p.add(P.spec("c", "f", "functions", ["beta"]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p._collect, "c")           # the poll's, under way
            await trio.testing.wait_all_tasks_blocked()
            listing, got = trio.Event(), []

            async def lister():
                got.extend(await p.list("c"))
                listing.set()
            nursery.start_soon(lister)
            await trio.testing.wait_all_tasks_blocked()
            assert not listing.is_set()    # it waits for the collect under way ...
            poll_may_answer.set()
            await listing.wait()
        return got

    (probe,) = trio.run(main)
    assert asked == ["collect"] * 3        # ... then asks for itself
    assert probe["count"] == 5


def test_probe_list_keeps_apart_functions_whose_names_do_not_tell_them_apart():
    """`probe list` had a row per function *name*: two static functions of one name
    (C's `compare` in two files) were added up in one row, and a module could name
    a function '#6' to have its hits shown, and added up, as those of function 6.
    A name that does not tell its function apart gets the index with it."""
    sites = Sites(points=("functions",), kinds=(0, 0, 0, 0, 0),
                  functions=(3, 4, 5, 6, 7), names={3: "dup", 4: "dup", 5: "#6", 7: "#7"},
                  counters=8, imported=3)
    r = P.Registry(lambda: 0, {"c": ("functions",)})
    r.sites["c"] = sites
    r.add(P.spec("c", "f", "functions"), sites)
    r.counters("c", b"".join(n.to_bytes(8, "little") for n in (0, 0, 0, 0, 0)), r.pushed("c"))
    r.counters("c", b"".join(n.to_bytes(8, "little") for n in (1, 2, 3, 4, 5)), r.pushes["c"])
    rows = r.list("c")[0]["functions_hit"]
    assert {f: v["count"] for f, v in rows.items()} == {
        "dup (#3)": 1, "dup (#4)": 2, "#6 (#5)": 3, "#6": 4, "#7": 5}
    assert all(v["sites"] == 1 for v in rows.values())
    listed = trace.text(r.list("c"))
    assert "dup (#4)" in listed and "#6 (#5)" in listed


@pytest.mark.parametrize("names", [
    {3: "dup", 4: "dup", 5: "dup (#3)"},           # a name as another's row is shown
    {3: "dup", 4: "dup", 5: "dup (#4)", 6: "#6 (#5)", 7: "#5"},
    {3: "f (#4)", 4: "f", 5: "f"},
    {3: "#4 (#3)", 4: "#4", 5: "#5 (#3)", 6: "x", 7: "x (#6)"},
])
def test_probe_list_has_a_row_per_function_whatever_the_names(names):
    """A name written as another function's row ('dup (#3)', while two functions
    are named 'dup') was its own row's label too: the two functions' hits were
    added up in one row, as by name before.  Every function has a row of its own."""
    functions = tuple(range(3, 8))
    sites = Sites(points=("functions",), kinds=(0,) * 5, functions=functions,
                  names=names, counters=8, imported=3)
    r = P.Registry(lambda: 0, {"c": ("functions",)})
    r.sites["c"] = sites
    r.add(P.spec("c", "f", "functions"), sites)
    r.counters("c", bytes(40), r.pushed("c"))
    r.counters("c", b"".join((1 << k).to_bytes(8, "little") for k in range(5)), r.pushes["c"])
    rows = r.list("c")[0]["functions_hit"]
    assert len(rows) == len(functions), rows
    assert sorted(v["count"] for v in rows.values()) == [1 << k for k in range(5)], rows


def test_events_and_their_counts_keep_apart_functions_whose_names_do_not_tell_them_apart():
    """As `probe list`'s coverage rows: the events of an `events` probe (a trace,
    an analysis compartment) and the counts of a probe that counts them named
    each function by its name alone, so a module that named a function '#7' had
    its entries counted, and traced, as function 7's, and two static functions
    of one name added up in one count (an outside review, r240)."""
    sites = Sites(points=("functions",), kinds=(0, 0, 0, 0, 0),
                  functions=(3, 4, 5, 6, 7), names={3: "dup", 4: "dup", 5: "#7", 6: "solo"},
                  counters=8, imported=3)
    r = P.Registry(lambda: 0, {"c": ("functions",)})
    r.sites["c"] = sites
    r.add(P.spec("c", "e", "functions", events=True), sites)
    sub = r.subscribe(P.Subscriber(["c"]))
    r.engine_events("c", b"".join(EVENT.pack(ENTER, site, 10 + site, 0, 0)
                                  for site in (0, 1, 1, 2, 2, 2, 3, 4, 4)))
    got, _ = sub.take(100)
    assert [(e["name"], e["function"]) for e in got] == [
        ("dup (#3)", 3), ("dup (#4)", 4), ("dup (#4)", 4), ("#7 (#5)", 5), ("#7 (#5)", 5),
        ("#7 (#5)", 5), ("solo", 6), ("#7", 7), ("#7", 7)]
    assert r.list("c")[0]["counts"] == {"dup (#3)": 1, "dup (#4)": 2, "#7 (#5)": 3,
                                        "solo": 1, "#7": 2}


def test_a_probe_read_answers_what_fits_and_loses_no_event_uncounted():
    """An analysis compartment's read took up to `max` events and, if they did not
    fit in one message to it, refused them all (E2BIG): those events were gone and
    not counted (a compartment with message_size = "64 KiB" reading 1024 call
    events of a few hundred bytes each), and an event larger than a message made
    every read after it fail.  Now a read
    answers as many as fit, leaves the rest queued, and drops and counts only an
    event that cannot be sent at all."""
    from capnp_schemas import payloads
    from supervisor import hostcaps
    from supervisor.prober import PROBE, Prober

    answers = []

    class Sup:
        def _host_done(self, token, result):
            answers.append(result)

    class Call:
        token = 1
        max_bytes = 4096

    prober = object.__new__(Prober)
    prober.sup = Sup()

    def read(sub, n):
        answers.clear()
        prober._answer_read(Call(), sub, n)
        assert isinstance(answers[0], hostcaps.Answer), answers[0]
        got = payloads.read(PROBE.methods[0].results, answers[0].content, 1 << 20)
        return [e["name"] for e in got["events"]], got["dropped"]

    sub = P.Subscriber(["c"])
    names = [f"f{i}" for i in range(40)]
    for i, name in enumerate(names):
        sub.put({"kind": "enter", "compartment": "c", "name": name, "ts_ns": i})
        if i == 20:
            sub.put({"kind": "enter", "compartment": "c", "name": "x" * 10_000, "ts_ns": i})
    seen, dropped = [], 0
    for _ in range(40):
        got, d = read(sub, 1024)
        seen += got
        dropped += d
        if not sub.queue:
            break
    assert seen == names and dropped == 1 and not sub.queue
    Call.max_bytes = 8                  # not even an empty answer fits: said, nothing lost
    sub.put({"kind": "enter", "compartment": "c", "name": "f", "ts_ns": 1})
    prober._answer_read(Call(), sub, 10)
    assert isinstance(answers[-1], hostcaps.Refusal) and "E2BIG" in answers[-1].reason
    assert len(sub.queue) == 0 and sub.dropped == 1


def test_a_probe_read_builds_only_about_what_fits_in_its_answer(monkeypatch):
    """A read took `max` events (up to 1024), built the whole answer, and halved
    it until it fitted in one message to the reader: a reader with message_size
    = "4KiB" asking for 1024 events of a few hundred bytes had about 2,000
    events made and built into answers (~10 ms of the supervisor's loop) for
    each 8 it was answered, as often as it called read (a plain host call:
    ~30 us).  The events are measured as they are taken, and only those that
    fit are built."""
    from capnp_schemas import payloads
    from supervisor import hostcaps, prober as PR

    answers, made = [], []

    class Sup:
        def _host_done(self, token, result):
            answers.append(result)

    class Call:
        token = 1
        max_bytes = 4096

    real = PR._event_struct
    monkeypatch.setattr(PR, "_event_struct", lambda e: made.append(1) or real(e))
    prober = object.__new__(PR.Prober)
    prober.sup = Sup()
    sub = P.Subscriber(["c"])
    for i in range(1024):
        sub.put({"kind": "enter", "compartment": "c", "name": f"f{i:04d}" + "x" * 195,
                 "ts_ns": i})
    got = []
    while sub.queue:
        answers.clear()
        del made[:]
        prober._answer_read(Call(), sub, 1024)
        assert isinstance(answers[0], hostcaps.Answer), answers[0]
        assert answers[0].content.size() <= Call.max_bytes
        events = payloads.read(PR.PROBE.methods[0].results, answers[0].content,
                               1 << 20)["events"]
        assert events
        got += [e["name"] for e in events]
        assert len(made) <= len(events) + 1, (len(made), len(events))
    assert got == [f"f{i:04d}" + "x" * 195 for i in range(1024)]


def test_a_call_is_an_event_only_of_the_side_whose_probe_saw_it():
    """An outside review: a call between a probed compartment and one without a
    calls probe was fanned out as an event of both sides, so an analysis granted
    a Probe on the unprobed side read events no probe on its target had recorded,
    with the other compartment's probe names in `probes` (and a trace sink
    watching that side got them too).  Each side's event carries only its own
    probes, and a side without one gets nothing."""
    r = P.Registry(lambda: 0)
    r.add(P.spec("watched", "secret-probe-name", "calls"))
    analysis = r.subscribe(P.Subscriber(["other"]))           # a Probe grant on "other"
    both = r.subscribe(P.Subscriber(["watched", "other"]))    # the operator's trace
    mine = r.subscribe(P.Subscriber(["watched"]))
    r.calls.open(("k", 1), "other", "other.svc", "watched", "Svc.m")
    r.calls.close(("k", 1), "returned")
    r.calls.open(("k", 2), "watched", "watched.out", "other", "Out.m")
    r.calls.close(("k", 2), "failed", "nope")
    r.take_calls()
    assert analysis.take(10) == ([], 0)
    for sub in (both, mine):
        events, _ = sub.take(10)
        assert [(e["compartment"], e["probes"], e["name"]) for e in events] == [
            ("watched", ["secret-probe-name"], "Svc.m"),
            ("watched", ["secret-probe-name"], "Out.m")]
    # both sides probed: each sink that watches a side gets the call once, with
    # the probes of the sides it watches
    r.add(P.spec("other", "o", "calls"))
    r.calls.open(("k", 3), "other", "other.svc", "watched", "Svc.m")
    r.calls.close(("k", 3), "returned")
    r.take_calls()
    assert [(e["compartment"], e["probes"]) for e in analysis.take(10)[0]] == [("other", ["o"])]
    assert [(e["compartment"], e["probes"]) for e in mine.take(10)[0]] == [
        ("watched", ["secret-probe-name"])]
    [ev], _ = both.take(10)
    assert sorted(ev["probes"]) == ["o", "secret-probe-name"]


def test_a_hostcalls_probe_without_events_counts_and_sends_no_events():
    """An outside review: a hostcalls probe added without --events (counts, as
    docs/instrumentation.md says) still sent every host call of its compartment as
    an event to every sink: an analysis granted a Probe on it read each wasi and
    wsuper import the guest called, with its result and duration, though the docs
    promise it the events of probes that record events (--events, or calls) only."""
    r = P.Registry(lambda: 0)
    r.add(P.spec("c", "counts", "hostcalls"))
    sub = r.subscribe(P.Subscriber(["c"]))
    r.engine_events("c", EVENT.pack(HOSTCALL, 1, 11, 5000, 0))
    assert sub.take(10) == ([], 0)
    assert {p["name"]: p["counts"] for p in r.list("c")} == {"counts": {"wsuper.call": 1}}
    r.add(P.spec("c", "ev", "hostcalls", events=True))
    r.engine_events("c", EVENT.pack(HOSTCALL, 1, 12, 5000, 0))
    [ev], _ = sub.take(10)
    assert ev["kind"] == "hostcall" and ev["probes"] == ["ev"]
    assert {p["name"]: p["counts"] for p in r.list("c")} == {
        "counts": {"wsuper.call": 2}, "ev": {"wsuper.call": 1}}


@pytest.mark.parametrize("field,value", [("point", '"nowhere"'), ("functions", '["#-1"]'),
                                         ("functions", "[1]"), ("events", "1")])
def test_a_declared_probes_wrong_field_is_named_with_its_key_and_line(field, value):
    """FILE:LINE: KEY: REASON names the key that is wrong: a declared probe's bad
    `events`, `functions` or `point` was said to be the probe's table, on its
    header's line (`system.toml:3: compartments.a.probes.p: events must be ...`)."""
    from supervisor import policy
    body = {"point": '"functions"', field: value}
    text = ('[compartments.a]\nmodule = "a.wat"\ninstrument = ["functions"]\n'
            '[compartments.a.probes.p]\n' + "".join(f"{k} = {v}\n" for k, v in body.items()))
    line = 1 + text.splitlines().index(f"{field} = {value}")
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(text, "/srv/system.toml")
    assert str(e.value).startswith(
        f"/srv/system.toml:{line}: compartments.a.probes.p.{field}: "), str(e.value)


def test_calls_that_ended_before_a_restart_are_the_old_probes_events():
    """An outside review: a restart dropped the compartment's probes (and added its
    declared ones again, counting from then) before the router's finished call
    records were taken, so the calls that ended in the last poll interval before
    the new engine was ready, among them the one that crashed it, were counted
    by no probe and reached no sink (a trace, an analysis granted a Probe on it)."""
    clock = [0]
    r = P.Registry(lambda: clock[0])
    r.add(P.spec("svc", "served", "calls", events=True, declared=True))
    analysis = r.subscribe(P.Subscriber(["svc"]))
    r.calls.open(("k", 1), "client", "client.svc", "svc", "Svc.m")
    clock[0] = 5
    r.calls.close(("k", 1), "failed", "compartment svc trapped")     # the fatal call
    clock[0] = 10
    declared = r.restarted("svc")                # the new engine is ready
    r.add(declared[0])
    r.take_calls()
    [ev], dropped = analysis.take(10)
    assert (ev["compartment"], ev["name"], ev["outcome"], ev["probes"], dropped) == \
        ("svc", "Svc.m", "failed", ["served"], 0)


def test_an_in_module_event_is_sent_only_for_probes_that_record_events():
    """An outside review: an event of a function, block or store site was fanned to
    every sink watching the compartment with every probe on the site, counts-only
    ones included.  The engine records events while an --events probe's flags are
    on; one removed while its guest was busy (the flags applied later) or whose
    events were collected after it went left them to a counts-only probe on the
    same sites, and an analysis granted a Probe on the compartment read them, named
    as that probe's, though the docs promise it the events of probes that record
    events only.  (The hostcalls point was fixed alike before.)"""
    r = _registry()
    r.add(P.spec("c", "counts", "functions"), SITES)
    sub = r.subscribe(P.Subscriber(["c"]))
    r.engine_events("c", EVENT.pack(ENTER, 0, 10, 0, 0) + EVENT.pack(STORE, 3, 11, 64, 4))
    assert sub.take(10) == ([], 0)
    r.add(P.spec("c", "ev", "functions", events=True), SITES)
    r.engine_events("c", EVENT.pack(ENTER, 0, 12, 0, 0))
    [ev], _ = sub.take(10)
    assert ev["kind"] == "enter" and ev["probes"] == ["ev"]


def test_a_trace_keeps_tracing_a_compartment_that_restarts():
    """An outside review: a trace's calls probes are run-time probes, which a restart
    drops; the session went on to its end without them and without a word, so every
    call of a compartment that restarted during `wsuper trace` was missing from the
    trace from then on.  The session adds its probes again on the new engine and
    says so in a note."""
    import json
    import trio
    import trio.testing

    p, sup, _said = _stand_in_prober()
    p._trace_ids = 0
    lines = []

    class Stream:
        async def send_all(self, data):
            lines.append(json.loads(data))

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.trace, Stream(), {"seconds": 5, "compartments": "c"})
            while "trace-1" not in p.registry.probes.get("c", {}):
                await trio.sleep(0.01)
            sup._peer_of["c"] = sup._ready_peer["c"] = 2         # a new engine is ready
            p.started("c")
            await trio.sleep(1)
            p.registry.calls.open(("k", 1), "app", "app.c", "c", "Calc.add")
            p.registry.calls.close(("k", 1), "returned")
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    events = [e for line in lines for e in line.get("events", ())]
    assert [(e["caller"], e["callee"], e["name"]) for e in events] == [("app", "c", "Calc.add")]
    assert any("c restarted" in line.get("note", "") for line in lines), lines
    assert p.registry.probes.get("c", {}) == {} and lines[-1]["done"]


def test_an_engine_that_never_answers_a_collect_is_asked_no_other_meanwhile():
    """An outside review: a collect the engine did not answer within ENGINE_TIMEOUT
    stayed open in the router, and the next poll asked another: an engine that
    never answered (a guest in a long loop, a taken-over engine) grew the
    supervisor's open questions by one every 5 s for as long as it ran.  A collect
    waits for the one still open; once that is answered, the next is asked."""
    import trio
    import trio.testing
    from compartments import probing
    from supervisor import prober

    p, sup, _said = _stand_in_prober()
    p._unanswered = {}
    asked = []
    sup._set = trio.Event.set
    sup._perform = lambda effects: None
    sup.router = type("Router", (), {})()
    sup.router.engine_call = lambda name, method, content, answer: asked.append(
        (method, answer)) or []

    async def main():
        for _ in range(5):                       # five polls' worth, none answered
            with pytest.raises(prober.EngineBusy):
                await p._engine("c", probing.COLLECT)
        assert [m for m, _ in asked] == [probing.COLLECT]
        asked[0][1].lost(None, None, "c: engine gone")      # it ends (answered or gone)
        with pytest.raises(prober.EngineBusy):
            await p._engine("c", probing.COLLECT)
        assert [m for m, _ in asked] == [probing.COLLECT] * 2
        for _ in range(3):                       # other requests are never held back
            with pytest.raises(prober.EngineBusy):
                await p._engine("c", probing.PROBE, {"flags": b"", "hostcalls": False})
        assert [m for m, _ in asked] == [probing.COLLECT] * 2 + [probing.PROBE] * 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _trace_session(p, sup, during):
    """Run a 5 s trace of "c" with the stand-in prober; `during(p, sup)` (async)
    runs once its probe is on.  The session's JSON lines are returned."""
    import json
    import trio
    import trio.testing

    p._trace_ids = 0
    lines = []

    class Stream:
        async def send_all(self, data):
            lines.append(json.loads(data))

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.trace, Stream(), {"seconds": 5, "compartments": "c"})
            while "trace-1" not in p.registry.probes.get("c", {}):
                await trio.sleep(0.01)
            await during(p, sup)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return lines


def test_a_trace_does_not_add_again_a_probe_the_operator_removed():
    """An outside review: the operator removes a trace session's probe
    (`wsuper probe SYSTEM c remove trace-1`, audited), then c restarts: the
    session added it again on the new engine, undoing the operator's removal
    and tracing c again for the rest of the session."""
    import trio

    async def during(p, sup):
        await p.remove("c", "trace-1")
        await trio.sleep(1)
        sup._peer_of["c"] = sup._ready_peer["c"] = 2         # a new engine is ready
        p.started("c")
        await trio.sleep(1)
        assert "trace-1" not in p.registry.probes.get("c", {})
    p, sup, _said = _stand_in_prober()
    lines = _trace_session(p, sup, during)
    assert p.registry.probes.get("c", {}) == {} and lines[-1]["done"]
    assert not any("added again" in line.get("note", "") for line in lines), lines


def test_a_trace_removes_only_its_own_probes_at_its_end():
    """An outside review: the operator removes a trace session's probe and adds a
    probe of their own under the same name: at its end the session removed the
    operator's probe (by name), audited as removed 'by wsuper trace'."""
    import trio

    async def during(p, sup):
        await p.remove("c", "trace-1")
        await p.add(P.spec("c", "trace-1", "calls", events=True))
        await trio.sleep(1)
    p, sup, _said = _stand_in_prober()
    lines = _trace_session(p, sup, during)
    assert list(p.registry.probes.get("c", {})) == ["trace-1"] and lines[-1]["done"]
    assert not p.registry.probes["c"]["trace-1"].spec.declared


def test_a_removed_hostcalls_probe_counts_what_its_engine_recorded_before_it_went():
    """An outside review: a hostcalls probe counts the host-call records its engine
    keeps, which are collected every poll.  Removing one did not collect first (only
    functions, blocks and stores did): the host calls of the last poll were missing
    from the counts the removal answers (and a probe with events never sent them)."""
    import trio
    from compartments import probing
    from supervisor import prober

    p, _sup, _said = _stand_in_prober()
    record = EVENT.pack(HOSTCALL, 0, 0, 50, 0)

    async def engine(name, method, values=None, timeout=prober.ENGINE_TIMEOUT):
        if method == probing.COLLECT:
            return {"counters": b"", "events": record, "dropped": 0}
        return {"counters": b"", "events": b"", "dropped": 0}

    async def main():
        p._engine = None
        p.registry.add(P.spec("c", "h", "hostcalls"))
        p._engine = engine
        return await p.remove("c", "h")
    summary = trio.run(main)
    assert summary["seen"] == 1 and summary["counts"] == {P.HOST_FUNCTIONS[0]: 1}, summary


def test_a_trace_over_a_busy_guest_takes_its_probes_off_at_its_end():
    """An outside review: `wsuper trace --functions` of a compartment whose guest is
    busy (a long call): its engine answers a collect only when the guest next waits,
    so the poll's collect is nearly always under way, each taking up to
    ENGINE_TIMEOUT.  The session's end removes its probes within ENGINE_TIMEOUT + 1 s
    each, and a removal first waits for the poll's collect, then collects the last
    counts itself: cancelled before the probe left the registry, the session's
    probes (events on) stayed on the compartment for good."""
    import json
    import trio
    import trio.testing
    from compartments import probing
    from supervisor import prober

    p, sup, _said = _stand_in_prober()
    p._trace_ids = 0
    busy = [False]

    async def engine(name, method, values=None, timeout=prober.ENGINE_TIMEOUT):
        if busy[0]:                      # its guest is in a long call
            await trio.sleep(timeout)
            raise prober.EngineBusy(f"{name} did not answer within {timeout:g} s")
        if method == probing.DESCRIBE:
            return {"sites": json.dumps(SITES.to_json())}
        return {"counters": _counts(0, 0, 0, 0, 0, 0, 0), "events": b"", "dropped": 0}
    p._engine = engine

    class Stream:
        async def send_all(self, data):
            pass

    async def main():
        async with trio.open_nursery() as nursery:
            sup.nursery = nursery
            nursery.start_soon(p.trace, Stream(), {"seconds": 2, "compartments": "c",
                                                   "functions": "alpha"})
            while "trace-1-f" not in p.registry.probes.get("c", {}):
                await trio.sleep(0.01)
            busy[0] = True
            await trio.sleep(1.9)
            nursery.start_soon(p._quiet_collect, "c")      # the poll's, under way
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert p.registry.probes.get("c", {}) == {}


def test_a_trace_session_reports_every_event_it_dropped():
    """An outside review: a trace session's queue drops what does not fit and counts
    it, for the `dropped` of its last line (the trace file's otherData).  Each turn
    of the session took the queue's events and threw the count away (`events, _ =
    sub.take(...)`): only the drops after the last turn were reported, so a trace
    that lost events said it lost none."""
    import trio

    async def during(p, sup):
        (sub,) = [s for s in p.registry.subscribers if s.label == "trace"]
        sub.limit = 3
        for i in range(10):                  # 7 of them do not fit
            sub.put({"kind": "call", "compartment": "c", "id": i})
        await trio.sleep(1)
    p, sup, _said = _stand_in_prober()
    lines = _trace_session(p, sup, during)
    assert lines[-1]["done"] and lines[-1]["dropped"] == 7, lines[-1]
    assert sum(len(line.get("events", ())) for line in lines) == 3


def test_an_engine_event_from_before_its_probe_came_or_after_its_collect_is_not_its():
    """An outside review: the times of engine events were taken as sent.  A hit
    recorded for an older --events probe on the same site (or a host call begun)
    before a probe came was counted by it and sent as its event, unlike a call
    (counted only if begun after the probe came); and a hostile engine's record
    timed before the probe (0, or negative) or after the collect that brought it
    set the trace's time origin or end: every other compartment's events in the
    trace file were then days, or centuries, from it."""
    now = [100]
    r = P.Registry(lambda: now[0], {"c": ("functions", "blocks", "stores")})
    r.sites["c"] = SITES
    old = r.add(P.spec("c", "old", "functions", events=True), SITES)
    now[0] = 200
    new = r.add(P.spec("c", "new", "functions", events=True), SITES)
    h = r.add(P.spec("c", "h", "hostcalls", events=True))
    sub = r.subscribe(P.Subscriber(["c"]))
    r.engine_events("c", EVENT.pack(ENTER, 0, 150, 0, 0) + EVENT.pack(ENTER, 0, 250, 0, 0)
                    + EVENT.pack(HOSTCALL, 1, 150, 5, 0) + EVENT.pack(HOSTCALL, 1, 250, 5, 0)
                    + EVENT.pack(ENTER, 0, -(1 << 62), 0, 0) + EVENT.pack(ENTER, 0, 0, 0, 0)
                    + EVENT.pack(ENTER, 0, 1 << 62, 0, 0) + EVENT.pack(HOSTCALL, 1, 1 << 62, 5, 0),
                    until=300)
    got, _ = sub.take(100)
    assert [(e["kind"], e["ts_ns"], e["probes"]) for e in got] == [
        ("enter", 150, ["old"]), ("enter", 250, ["old", "new"]), ("hostcall", 250, ["h"])]
    assert (old.events, new.events, h.events) == (2, 1, 1)


def test_a_trace_of_a_compartment_named_twice_traces_it_once():
    """An outside review: `wsuper trace SYSTEM --compartments c,c` added c's trace
    probe, then tried again and told the client "c has a probe named trace-1
    already (remove it first)", an error about a probe the session itself had
    just added, and listed c twice in its compartments."""
    import json
    import trio
    import trio.testing

    p, _sup, _said = _stand_in_prober()
    p._trace_ids = 0
    lines = []

    class Stream:
        async def send_all(self, data):
            lines.append(json.loads(data))
    trio.run(p.trace, Stream(), {"seconds": 1, "compartments": "c,c"},
             clock=trio.testing.MockClock(autojump_threshold=0))
    assert not any("note" in line for line in lines), lines
    assert lines[0]["ok"] and lines[0]["compartments"] == ["c"], lines[0]


def _system_file(tmp_path) -> str:
    """A system file for a trace client whose session is made up: `trace -o` reads
    it to know the system's own files, which it never writes over, and refuses
    while it does not read (5490258); these tests named a file that was not there."""
    path = tmp_path / "s.toml"
    if not path.exists():
        path.write_text('[compartments.calc]\nmodule = "calc.wat"\nexports = "Calc"\n')
    return str(path)


@pytest.mark.parametrize("came", [True, False])
def test_ctrl_c_on_a_trace_writes_what_came_and_leaves_no_empty_file(tmp_path, monkeypatch,
                                                                       capsys, came):
    """An outside review: Ctrl-C on `wsuper trace --seconds 60 -o t.json` after
    some events had come lost them all (KeyboardInterrupt out of the session) and
    left t.json behind empty where there had been no file; Ctrl-C before the
    session began left it empty too.  What came is written, as for a session the
    system cut short, and exit 130; with nothing come, no file is left."""
    import argparse
    from supervisor import probecli

    def session(system, body, timeout):
        if came:
            yield {"ok": True, "compartments": {"calc": 7}}
            yield {"events": [{"kind": "call", "ts": 1, "dur": 2, "caller": "external",
                               "callee": "calc", "method": "add"}]}
        raise KeyboardInterrupt
    monkeypatch.setattr(probecli, "_lines", session)
    out = tmp_path / "t.json"
    args = argparse.Namespace(system=_system_file(tmp_path), seconds=60.0, compartments=None,
                              functions=False, output=str(out), format="chrome")
    try:
        code = probecli.trace_command(args)
    except KeyboardInterrupt:
        code = "KeyboardInterrupt"
    said = capsys.readouterr()
    err = said.err
    assert code == 130, code
    if came:
        import json
        assert "traceEvents" in json.loads(out.read_text())
        assert "1 events (1 call records)" in said.out, said.out
        assert "interrupted" in err and str(out) in err, err
    else:
        assert not out.exists() and "interrupted" in err, err


@pytest.mark.parametrize("sig,came", [("SIGTERM", True), ("SIGTERM", False), ("SIGHUP", True)])
def test_sigterm_on_a_trace_writes_what_came_and_leaves_no_empty_file(tmp_path, sig, came):
    """An outside review: `timeout 30 wsuper trace SYSTEM --seconds 60 -o t.json`
    (SIGTERM), a service manager's stop or a closed terminal (SIGHUP) killed the
    client by the signal's default: every event that had come was lost and t.json
    was left empty where there had been no file (Ctrl-C wrote what came).  Both
    are taken as Ctrl-C is: what came is written, exit 128 + the signal, naming it;
    with nothing come, no file is left."""
    import pathlib
    import subprocess
    import sys
    ROOT = pathlib.Path(__file__).resolve().parents[2]
    out = tmp_path / "t.json"
    script = f"""
import argparse, os, signal, sys
sys.path.insert(0, {repr(str(ROOT))})
from supervisor import probecli
def session(system, body, timeout):
    if {came!r}:
        yield {{"ok": True, "compartments": {{"calc": 7}}}}
        yield {{"events": [{{"kind": "call", "ts": 1, "dur": 2, "caller": "external",
                             "callee": "calc", "method": "add"}}]}}
    os.kill(os.getpid(), signal.{sig})
    signal.pause()
probecli._lines = session
args = argparse.Namespace(system={_system_file(tmp_path)!r}, seconds=60.0, compartments=None,
                          functions=False, output={str(out)!r}, format="chrome")
sys.exit(probecli.trace_command(args))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, start_new_session=True)
    import signal
    signum = getattr(signal, sig)
    assert p.returncode == 128 + signum, (p.returncode, p.stderr)
    assert f"interrupted ({sig})" in p.stderr, p.stderr
    if came:
        import json
        assert "traceEvents" in json.loads(out.read_text())
        assert "1 events (1 call records)" in p.stdout, p.stdout
    else:
        assert not out.exists(), out


def test_a_collect_answered_after_it_was_given_up_on_is_still_read():
    """An outside review: a collect the engine did not answer within ENGINE_TIMEOUT
    (a guest in a long call answers when it next waits) was left open, and its
    answer, when it came, was read by nobody.  The engine forgets the events a
    collect takes, so every host call and function event of the long call was lost
    to a trace and to analysis compartments.  The next collect reads it first."""
    import trio
    import trio.testing
    from supervisor import prober

    p, sup, _said = _stand_in_prober()
    now = [100]
    p.registry = P.Registry(lambda: now[0], {"c": ("functions",)})
    p.registry.sites["c"] = None
    h = p.registry.add(P.spec("c", "h", "hostcalls", events=True))
    sub = p.registry.subscribe(P.Subscriber(["c"]))
    now[0] = 300
    asked = []
    sup._set = trio.Event.set
    sup._perform = lambda effects: None
    sup.router = type("Router", (), {})()

    def engine_call(name, method, content, answer):
        asked.append(answer)
        if len(asked) > 1:               # the guest waits now: answered at once
            answer.value = {"counters": b"", "events": EVENT.pack(HOSTCALL, 1, 250, 5, 0),
                            "dropped": 0}
            answer.done.set()
        return []
    sup.router.engine_call = engine_call

    async def main():
        with pytest.raises(prober.EngineBusy):
            await p._collect("c")               # the guest is in a long call
        asked[0].value = {"counters": b"", "events": EVENT.pack(HOSTCALL, 1, 150, 5, 0),
                          "dropped": 0}
        asked[0].done.set()                     # it waits: the first collect's answer
        await p._collect("c")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    got, _ = sub.take(100)
    assert [(e["kind"], e["ts_ns"]) for e in got] == [("hostcall", 150), ("hostcall", 250)]
    assert h.events == 2


@pytest.mark.parametrize("existed", [True, False])
def test_ctrl_c_while_a_trace_file_is_written_leaves_it_whole(tmp_path, monkeypatch, capsys,
                                                             existed):
    """An outside review: Ctrl-C (or SIGTERM) once the session's events had come,
    while `wsuper trace` wrote them (a large trace takes seconds), left the -o file
    emptied and cut short: no JSON, every event lost, and the file it replaced (an
    earlier trace) gone too.  The signal waits until the file is whole; it is
    then taken as an interruption (exit 130)."""
    import argparse
    import json
    import signal
    from supervisor import probecli

    def session(system, body, timeout):
        yield {"ok": True, "compartments": {"calc": 7}}
        yield {"events": [{"kind": "call", "ts": 1, "dur": 2, "caller": "external",
                           "callee": "calc", "method": "add"}]}
        yield {"done": True, "dropped": 0}
    real = trace.chrome

    def chrome(events, meta):
        signal.raise_signal(signal.SIGINT)       # Ctrl-C as the file is written
        return real(events, meta)
    monkeypatch.setattr(probecli, "_lines", session)
    monkeypatch.setattr(trace, "chrome", chrome)
    out = tmp_path / "t.json"
    if existed:
        out.write_text('{"an": "earlier trace"}')
    args = argparse.Namespace(system=_system_file(tmp_path), seconds=60.0, compartments=None,
                              functions=False, output=str(out), format="chrome")
    # Ctrl-C as a command's process takes it: a test run earlier in this process
    # may have left SIGINT with a handler of its own (the full suite did)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = probecli.trace_command(args)
    except KeyboardInterrupt:
        code = "KeyboardInterrupt"
    finally:
        signal.signal(signal.SIGINT, before)
    err = capsys.readouterr().err
    assert code == 130, code
    assert "traceEvents" in json.loads(out.read_text())
    assert "interrupted (SIGINT)" in err, err


def test_a_trace_written_to_a_pipe_or_to_stdout_is_whole_and_alone(tmp_path, monkeypatch,
                                                                   capsys):
    """A review of the operator's commands: `wsuper trace S -o /dev/stdout | jq`
    ended "underlying stream is not seekable", exit 1, every event lost (the file
    was emptied with seek and truncate, which a pipe has not); `-o /dev/stdout >
    t.json` had the "wrote" line land in the trace, after its JSON; and `-o` on a
    full disk said only "[Errno 28] No space left on device".  A pipe is written
    as it is, the line goes to stderr when the trace goes to stdout, and a failed
    write names the file, once, exit 1."""
    import argparse
    import json
    import os
    import sys
    from supervisor import probecli

    def session(system, body, timeout):
        yield {"ok": True, "compartments": {"calc": 7}}
        yield {"events": [{"kind": "call", "ts": 1, "dur": 2, "caller": "external",
                           "callee": "calc", "method": "add"}]}
        yield {"done": True, "dropped": 0}
    monkeypatch.setattr(probecli, "_lines", session)

    def trace_to(output, fmt="chrome"):
        return probecli.trace_command(argparse.Namespace(
            system=_system_file(tmp_path), seconds=1.0, compartments="", functions="",
            output=output, format=fmt))
    r, w = os.pipe()
    try:
        assert trace_to(f"/proc/self/fd/{w}") == 0
        os.close(w)
        w = None
        with os.fdopen(r, "rb") as f:
            r = None
            assert "traceEvents" in json.loads(f.read())
    finally:
        for fd in (r, w):
            if fd is not None:
                os.close(fd)
    capsys.readouterr()
    # the trace to stdout (here a file): the file holds the trace alone
    out = tmp_path / "stdout.jsonl"
    with open(out, "w") as stdout:
        before, sys.stdout = sys.stdout, stdout
        try:
            assert trace_to(f"/proc/self/fd/{stdout.fileno()}", "jsonl") == 0
        finally:
            sys.stdout = before
    lines = out.read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines), lines
    assert "wsuper: wrote" in capsys.readouterr().err
    # ... appended to (`-o /dev/stdout >> log`): the log is kept, the trace after it
    # (r268's whole-or-nothing file replaced the file behind the descriptor: the log
    # lost, and the "wrote" line gone to the file unlinked)
    log = tmp_path / "log"
    log.write_text("kept\n")
    with open(log, "a") as stdout:
        before, sys.stdout = sys.stdout, stdout
        try:
            assert trace_to(f"/proc/self/fd/{stdout.fileno()}", "jsonl") == 0
        finally:
            sys.stdout = before
    first, *lines = log.read_text().splitlines()
    assert first == "kept" and lines and all(json.loads(line) for line in lines), lines
    assert "wsuper: wrote" in capsys.readouterr().err
    if os.path.exists("/dev/full"):
        assert trace_to("/dev/full") == 1
        err = capsys.readouterr().err
        assert err == "wsuper: error: -o /dev/full: cannot write the trace: No space left " \
                      "on device\n", err


class _CountedSites(tuple):
    """A probe's sites that count how often they are walked."""
    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def test_a_collect_costs_nothing_per_site_of_each_probe():
    """An outside review: every collect (each engine every 0.1 s) copied each probe's
    counters and its baseline site by site, in the supervisor's event loop: with a
    hostile module of 500,000 block sites and 64 probes on them, one collect took 5 s
    of the loop that routes every compartment's calls, again and again.  A collect now
    keeps the engine's counters once, for every probe; a probe reads its own sites
    only when it is listed, and counts the same."""
    r = _registry()
    a = r.add(P.spec("c", "a", "functions", ["beta"]), SITES)
    b = r.add(P.spec("c", "b", "blocks"), SITES) if "blocks" in SITES.points else None
    for p in (a, b):
        if p is not None:
            p.sites = _CountedSites(p.sites)
    sent = r.pushed("c")
    _CountedSites.walks = 0
    for n in range(50):
        r.counters("c", _counts(0, 0, 0, 0, n, 0, 0), sent)
    assert _CountedSites.walks == 0
    assert r.list("c")[0]["count"] == 49


def test_events_cost_nothing_per_site_of_each_probe_at_every_collect():
    """An outside review: each slice of events a collect brought (and every collect,
    events or not) mapped every site of every probe of the compartment to its probes
    again, in the event loop: a module of 500,000 sites with 8 probes on them cost
    0.36 s a slice, at every poll.  The map is made when the probes change, and a
    collect with no event makes none; events still reach the probes on their site."""
    r = _registry()
    a = r.add(P.spec("c", "a", "functions", ["beta"], events=True), SITES)
    b = r.add(P.spec("c", "b", "stores"), SITES)
    for p in (a, b):
        p.sites = _CountedSites(p.sites)
    r._changed("c")
    r.engine_events("c", EVENT.pack(ENTER, 4, 10, 0, 0))         # the map, made once
    _CountedSites.walks = 0
    for n in range(50):
        r.engine_events("c", b"")
        r.engine_events("c", EVENT.pack(ENTER, 4, 10 + n, 0, 0) + EVENT.pack(STORE, 6, 11, 64, 4))
    assert _CountedSites.walks == 0
    assert a.events == 51 and b.events == 50
    r.remove("c", "b")                                              # probes changed: made again
    r.engine_events("c", EVENT.pack(STORE, 6, 99, 64, 4))
    assert b.events == 50


def test_probe_list_finds_coverage_off_the_event_loop(monkeypatch):
    """An outside review: `probe list` (and the answer of `probe add` and `remove`)
    found each in-module probe's coverage site by site in the supervisor's event
    loop: 0.4 s a probe on a module of 500,000 sites, 27 s for 64 of them, while no
    compartment's call was routed.  It is found in a worker thread now, and says the
    same."""
    import threading
    import trio
    p, sup, said = _stand_in_prober()
    p.registry.sites["c"] = SITES
    probe = p.registry.add(P.spec("c", "a", "functions", ["beta"]), SITES)
    sent = p.registry.pushed("c")
    p.registry.counters("c", _counts(0, 0, 0, 0, 2, 0, 0), sent)
    p.registry.counters("c", _counts(0, 0, 0, 0, 9, 0, 0), sent)
    where = []
    real = P.coverage

    def coverage(*args):
        where.append(threading.current_thread() is threading.main_thread())
        return real(*args)
    monkeypatch.setattr(P, "coverage", coverage)

    async def no_collect(name):
        pass
    p._collect = no_collect
    got = trio.run(p.list, "c")
    assert where == [False]
    assert got == [probe.summary(SITES, real(SITES, probe.sites, probe.counters,
                                             probe.baseline))]
    assert got[0]["count"] == 7 and got[0]["functions_hit"]["beta"]["count"] == 7


def test_flags_cost_nothing_per_site_of_each_probe_at_every_push():
    """An outside review: each push of the flags (every probe added or removed, and
    each trace session's) set them site by site for every probe of the compartment,
    in the event loop: 1.6 s for 64 probes on a module of 500,000 sites.  Each probe's
    sites are a mask made once; the flags are the same."""
    r = _registry()
    a = r.add(P.spec("c", "a", "functions", ["beta"], events=True), SITES)
    b = r.add(P.spec("c", "b", "blocks"), SITES)
    c = r.add(P.spec("c", "c", "stores", ["alpha"]), SITES)
    for p in (a, b, c):
        p.sites = _CountedSites(p.sites)
    want = bytearray(len(SITES))
    for p, bit in ((a, COUNT | EVENTS), (b, COUNT), (c, COUNT)):
        for site in tuple.__iter__(p.sites):
            want[site] |= bit
    assert r.flags("c")[0] == bytes(want) == bytes([0, COUNT, COUNT, COUNT, COUNT | EVENTS,
                                                    COUNT, 0])
    _CountedSites.walks = 0
    for _ in range(20):
        assert r.flags("c")[0] == bytes(want)
    assert _CountedSites.walks == 0
    r.remove("c", "b")
    assert r.flags("c")[0] == bytes([0, 0, 0, COUNT, COUNT | EVENTS, 0, 0])


def test_a_trace_client_keeps_a_bounded_number_of_events_and_counts_the_rest(
        tmp_path, monkeypatch, capsys):
    """A review of the operator's commands: `wsuper trace` kept every event of the
    session in memory until its end (~740 bytes each, and the Chrome file four
    records per call): a compartment calling in a loop (the system sends up to
    50,000 events a second) made `wsuper trace S --seconds 600` take tens of
    gigabytes of the operator's machine, and die with nothing written.  It keeps
    at most MAX_TRACE_EVENTS; the rest are counted as dropped, and said."""
    import argparse
    import json
    from supervisor import probecli
    monkeypatch.setattr(probecli, "MAX_TRACE_EVENTS", 1000)

    def session(system, body, timeout):
        yield {"ok": True, "compartments": ["calc"]}
        for chunk in range(10):
            yield {"events": [{"kind": "call", "id": chunk * 500 + i, "ts_ns": chunk * 500 + i,
                               "dur_ns": 1, "caller": "app", "callee": "calc",
                               "name": "add"} for i in range(500)]}
        yield {"done": True, "dropped": 7}
    monkeypatch.setattr(probecli, "_lines", session)
    out = tmp_path / "t.jsonl"
    args = argparse.Namespace(system=_system_file(tmp_path), seconds=60.0, compartments=None,
                              functions=False, output=str(out), format="jsonl")
    assert probecli.trace_command(args) == 0
    said = capsys.readouterr()
    lines = out.read_text().splitlines()
    assert len(lines) == 1000 and json.loads(lines[-1])["id"] == 999
    assert "1000 events" in said.out and "4007 dropped" in said.out, said
    out = tmp_path / "t.json"
    args.output, args.format = str(out), "chrome"
    assert probecli.trace_command(args) == 0
    assert json.loads(out.read_text())["otherData"]["dropped"] == 4007


def test_a_reader_is_stalled_only_when_nothing_it_was_sent_is_taken_for_the_timeout():
    """probes.ReaderWatch: what a sink writes raises what is queued; only a fall of
    it (or nothing queued) is the reader taking something."""
    w = P.ReaderWatch(0.0)
    w.look(1.0, 0)
    w.wrote(800)                      # a line sent, not taken
    w.look(3.0, 800)
    w.wrote(1600)                     # another
    w.look(5.9, 1600)
    assert not w.stalled(5.9, 5.0)    # nothing taken since 1.0, but not 5 s yet
    assert w.stalled(6.0, 5.0)
    w.look(6.5, 800)                  # it took one line: reading again
    assert not w.stalled(11.0, 5.0) and w.stalled(11.5, 5.0)
    w.look(12.0, 0)                   # all taken
    w.wrote(900)
    w.look(16.9, 900)
    assert not w.stalled(16.9, 5.0)
    w.look(17.0, None)                # cannot be told: as if taken
    assert not w.stalled(21.9, 5.0)


def test_a_trace_closes_the_functions_a_killed_engine_was_in_and_marks_the_new_one():
    """A killed engine reports no exits: the functions it was in stayed open to the
    end of the trace, and the new engine's functions were drawn nested inside them,
    with nothing saying an engine had changed.  They are closed at the old engine's
    last event, the new one is marked where its events begin, and both are named."""
    r = P.Registry(lambda: 0)
    r.restarted("relay", 101)
    assert r.incarnations["relay"] == (1, 101)
    r.restarted("relay", 202)
    assert r.incarnations["relay"] == (2, 202)
    old = [{"kind": "enter", "compartment": "relay", "name": n, "ts_ns": t,
            "incarnation": 1, "engine_pid": 101} for n, t in (("main", 1000), ("forward", 2000))]
    new = [{"kind": "enter", "compartment": "relay", "name": "forward", "ts_ns": 9000,
            "incarnation": 2, "engine_pid": 202},
           {"kind": "exit", "compartment": "relay", "name": "forward", "ts_ns": 9500,
            "incarnation": 2, "engine_pid": 202}]
    t = trace.chrome(old + new)
    body = [e for e in t["traceEvents"] if e["ph"] != "M"]
    assert [(e["ph"], e["name"], e["ts"]) for e in body] == [
        ("B", "main", 0.0), ("B", "forward", 1.0), ("E", "forward", 1.0), ("E", "main", 1.0),
        ("i", "engine 2", 8.0), ("B", "forward", 8.0), ("E", "forward", 8.5)]
    assert body[2]["args"] == {"unwound": True, "engine_ended": 1}
    assert [x["engine_pid"] for x in t["otherData"]["incarnations"]["relay"]] == [101, 202]
    # events without an incarnation (older sinks, hostile input) change nothing
    assert "incarnations" not in trace.chrome([{**e, "incarnation": "x"} for e in old])["otherData"]
