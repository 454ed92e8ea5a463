"""Randomized scenarios of the router's call lifecycle, with every invariant checked.

    python -m fuzz.router_scenarios --seeds 1-5000 --steps 120

Pure logic, no processes: the router (supervisor/router.py) with the hand-driven
engines and clients of tests/unit/test_router.py.  Compartments a1 and a2 call
calc (through revocable grants), store, and a revocable host clock; external
clients call calc.  Random steps: calls (with capabilities, with a capability
promised in an unanswered call, pipelined on one), host calls answered late (only
while `host_call_live`, as the runtime does), a caller passing its calc grant on
to store, which calls it and hands it out, capabilities got in answers called,
calc calling back what it was passed, calc's answers (results, errors, a callback
first), revocations, calc, store and callers restarting or killed, clients that
cancel (Finish) or go, time passing (call_time).  After each step:

* no call reaches calc once its caller was answered (revoked, timed out,
  cancelled, its caller gone);
* every answer goes to the call it belongs to (each call carries a tag that
  calc's answer echoes);
* no internal error was reported;
* no host call is live, no call waits and no call's membranes are still
  recorded (`_through`) once its caller is gone or answered (a reused id would
  then be matched);

and at the end, with everyone gone: no bytes still counted as waiting, no call
waiting, no audit record left open, no orphan, nothing pending, and the router
imports nothing of calc's but its main and control objects.

tests/unit/test_fuzz_router_scenarios.py runs a few hundred seeds of it (written,
then extended, by outside reviews of the router's call lifecycle: each version
found holes, fixed since).
"""
from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from capnp_schemas import wire  # noqa: E402
from capnp_schemas.protocol import RemoteRef  # noqa: E402
from tests.unit.test_router import CLOCK  # noqa: E402
from supervisor import effects as fx  # noqa: E402
from tests.unit.test_router import (CALC, NAMES, P, R, Content, FakeEngine,  # noqa: E402
                                    client, grant, start)


def content(tag, cap=False):
    if cap:
        return Content.standalone([struct.pack("<QQQ", (1 << 32) | (1 << 48), tag, wire.cap_pointer(0))])
    return Content.standalone([struct.pack("<QQ", 1 << 32, tag)])

def tag_of(payload):
    try:
        if isinstance(payload, fx.HostCall):
            return struct.unpack_from('<Q', wire.unframe(payload.content.single_segment_copy())[0], 8)[0]
        seg = wire.unframe(payload.content.single_segment_copy())[0]
        return struct.unpack_from("<Q", seg, 8)[0]
    except Exception:
        return None

class Violation(Exception):
    """A broken invariant, found as it happened."""

def scenario(seed: int, steps: int = 60, ops=None) -> str | None:
    """One random scenario (or the given `ops`); None if every check held, else what
    broke, where, and the operations that led there."""
    rng = random.Random(seed)
    now = [0.0]
    names = dict(NAMES); names[CLOCK] = ("Clock", {0: "wall"})
    router = R.Router({"calc": CALC, "a1": None, "a2": None, "store": CALC}, external=("calc",), names=names,
                      audit=True, clock=lambda: now[0],
                      limits={"calc": R.Limits(call_time=5.0)},
                      external_limits=R.Limits(in_flight=4, call_time=5.0))
    FakeEngine.all = {}
    state = {"calc": start(router, "calc", exports=True), "starting": None}
    store = start(router, "store", exports=True)
    callers = {n: start(router, n, [grant("calc", "calc", revocable=True), grant("store", "store"),
                                    grant("time", "clock", "host", revocable=True)],
                        answer_hosts=False)
               for n in ("a1", "a2")}
    store_held = []    # import ids (in store) of capabilities passed to store
    got_caps = []      # (caller, import id) capabilities a caller got in a return
    exts = []
    sent = {}          # (id(caller), qid) -> tag, open questions
    done = set()       # tags answered to their callers
    tagc = [0]
    seen, keep = set(), []
    log = []

    def new_tag():
        tagc[0] += 1
        return tagc[0]

    def store_pending():
        """The calls store received and has not answered yet."""
        latest = {}
        for ev in store.inbox:
            if isinstance(ev, P.CallReceived):
                latest[ev.answer_id] = ev
        return [ev for ev in latest.values() if ev.answer_id in store.conn.answers
                and not store.conn.answers[ev.answer_id].returned]

    def ask(c, target, method, with_cap=False, caps=(), interface=CALC):
        """`c` calls `target` with a new tag (and `caps`), remembered with the question."""
        t = new_tag()
        q, data = c.conn.send_call(target, interface, method, content(t, with_cap), list(caps))
        sent[(id(c), q)] = t
        c.send(data)

    def collect():
        for c in list(callers.values()) + exts + [store]:
            rest = []
            for ev in c.inbox:
                if isinstance(ev, P.ReturnReceived):
                    key = (id(c), ev.question_id)
                    t = sent.pop(key, None)
                    if t is None:
                        raise Violation(f"{c.name}: return for unknown question {ev.question_id}")
                    if ev.payload is not None:
                        got = tag_of(ev.payload)
                        if got != t and got is not None:
                            raise Violation(f"{c.name}: answer to tag {t} carries tag {got}")
                    done.add(t)
                    if ev.payload is not None and c is not store:
                        for cp in ev.payload.caps:
                            if isinstance(cp, P.Imported):
                                got_caps.append((c, cp.import_id))
                    if ev.finish_needed and c.pid in router.peers:
                        try:
                            c.send(c.conn.send_finish(ev.question_id))
                        except KeyError:
                            pass
                elif c is store and isinstance(ev, P.CallReceived):
                    rest.append(ev)
                    for cp in ev.payload.caps:
                        if isinstance(cp, P.Imported) and cp.import_id not in store_held:
                            store_held.append(cp.import_id)
                else:
                    rest.append(ev)
            c.inbox = rest
        calc = state["calc"]
        for ev in calc.inbox:       # calc finishes the answers it gets (as an engine does)
            if isinstance(ev, P.ReturnReceived) and id(ev) not in seen:
                seen.add(id(ev)); keep.append(ev)
                if ev.finish_needed and calc.pid in router.peers \
                        and ev.question_id in calc.conn.questions \
                        and not calc.conn.questions[ev.question_id].finished:
                    calc.send(calc.conn.send_finish(ev.question_id))
        for ev in calc.inbox:
            if isinstance(ev, P.CallReceived) and id(ev) not in seen:
                t = tag_of(ev.payload)
                seen.add(id(ev)); keep.append(ev)
                if t in done:
                    raise Violation(f"calc received tag {t} after its caller was answered")

    def host_invariant():
        for token, (call, host) in router._host_calls.items():
            peer, aid = call.reply
            if not peer.alive or not peer.conn.awaiting_return(aid):
                raise Violation(f"host call {token} still live but its caller "
                                f"{peer.name} is {'gone' if not peer.alive else 'answered'}")
        for key in router._through:        # a stale key: a reused id would be revoked
            if not key[0].alive or not key[0].conn.awaiting_return(key[1]):
                raise Violation(f"_through holds a call of {key[0].name} that ended "
                                f"({'gone' if not key[0].alive else 'answered'})")
        for key, w in router._waiting.items():
            if not key[0].alive:
                raise Violation(f"call of gone {key[0].name} still waiting")

    def internal():
        for e in FakeEngine.all.values():
            for x in e.effects:
                if isinstance(x, fx.Notice) and "internal error" in x.text:
                    raise Violation("internal error: " + x.text)

    def calls_at_calc():
        latest = {}
        for ev in state["calc"].inbox:
            if isinstance(ev, P.CallReceived):
                latest[ev.answer_id] = ev
        return list(latest.values())

    for step in range(steps):
        if ops is not None:
            if step >= len(ops):
                break
            op = ops[step]
        else:
            op = rng.choice(["host", "host", "host_done", "pass_store", "store_use", "store_give",
                         "use_got", "cb_self", "revoke", "kill_caller", "store_kill", "pipe", "pipe",
                          "call", "call", "call_cap", "answer", "answer", "revoke", "restart",
                         "up", "ext_new", "ext_call", "ext_gone", "ext_finish", "tick",
                         "promise", "call_store", "store_answer", "kill", "ext_pipe",
                         "ext_promise", "ext_call"])
        log.append(op)
        calc = state["calc"]
        try:
            if op == "host":
                c = callers[rng.choice(["a1", "a2"])]
                if c.pid in router.peers:
                    ask(c, c.grants[2].import_id, 0, interface=CLOCK)
            elif op == "host_done":
                pend = [(c, h) for c in callers.values() for h in c.host_calls]
                if pend:
                    c, h = rng.choice(pend)
                    c.host_calls.remove(h)
                    if router.host_call_live(h.token):     # as runtime._host_job
                        if rng.random() < 0.7:
                            c.deliver(router.host_returned(h.token, content(tag_of(h) or 0)))
                        else:
                            c.deliver(router.host_failed(h.token, "EIO"))
            elif op == "pass_store":      # a caller passes its calc grant on to store
                c = callers[rng.choice(["a1", "a2"])]
                if c.pid in router.peers:
                    ask(c, c.grants[1].import_id, 0, with_cap=True, caps=[RemoteRef(c.grants[0].import_id)])
            elif op == "store_use" and store_held:
                imp = rng.choice(store_held)
                if imp in store.conn.imports:
                    ask(store, imp, rng.randrange(3))
            elif op == "store_give" and store_held:    # store answers a call with a held cap
                sp = store_pending()
                imp = rng.choice(store_held)
                if sp and imp in store.conn.imports:
                    ev = rng.choice(sp)
                    store.send(store.conn.send_return(ev.answer_id, content(tag_of(ev.payload) or 0, True),
                                                      [RemoteRef(imp)]))
            elif op == "use_got" and got_caps:
                c, imp = rng.choice(got_caps)
                if c.pid in router.peers and imp in c.conn.imports:
                    ask(c, imp, rng.randrange(3))
            elif op == "cb_self":      # calc calls a cap it was passed, passing it back
                caps = [cp for ev in calls_at_calc() for cp in ev.payload.caps
                        if isinstance(cp, P.Imported) and cp.import_id in calc.conn.imports]
                if caps:
                    cp = rng.choice(caps)
                    calc.send(calc.conn.send_call(cp.import_id, 0xC0FFEE0000000003, 0, content(0, True), [RemoteRef(cp.import_id)])[1])
            elif op == "pipe":             # an engine pipelines (a compromised one may)
                c = callers[rng.choice(["a1", "a2"])]
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].returned]
                if opens and c.pid in router.peers:
                    ask(c, (rng.choice(opens), (0,)), rng.randrange(3))
            elif op == "store_kill":         # store crashes and comes back
                store.deliver(router.stop_engine("store", "crash"))
                for key in [k for k in sent if k[0] == id(store)]:
                    done.add(sent.pop(key))
                store = start(router, "store", exports=True)
                store_held.clear()
            elif op == "kill_caller":      # a1 or a2 crashes and comes back
                n = rng.choice(["a1", "a2"])
                c = callers[n]
                c.deliver(router.stop_engine(n, "crash"))
                for key in [k for k in sent if k[0] == id(c)]:
                    done.add(sent.pop(key))
                got_caps[:] = [g for g in got_caps if g[0] is not c]
                callers[n] = start(router, n, [grant("calc", "calc", revocable=True),
                                               grant("store", "store"),
                                               grant("time", "clock", "host", revocable=True)],
                                   answer_hosts=False)
                callers[n].host_calls.extend(c.host_calls)    # the host layer still has them
            elif op == "call":
                c = callers[rng.choice(["a1", "a2"])]
                ask(c, c.grants[0].import_id, rng.randrange(3))
            elif op == "call_store":
                c = callers[rng.choice(["a1", "a2"])]
                ask(c, c.grants[1].import_id, 0)
            elif op == "store_answer":
                sp = store_pending()
                if sp:
                    ev = rng.choice(sp)
                    store.send(store.conn.send_return(ev.answer_id, content(tag_of(ev.payload) or 0)))
            elif op == "kill" and state["starting"] is None:
                calc.deliver(router.disconnected(calc.pid, "killed"))
                e, starts = start(router, "calc", exports=True, later=True)
                state["calc"], state["starting"] = e, starts
            elif op == "ext_pipe" and exts:
                c = rng.choice(exts)
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].returned]
                if opens:
                    ask(c, (rng.choice(opens), (0,)), 0)
            elif op == "ext_promise" and exts:
                c = rng.choice(exts)
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].returned]
                if opens:
                    ask(c, c.grants[0].import_id, 1, with_cap=True, caps=[P.ReceiverAnswer(rng.choice(opens), (0,))])
            elif op == "call_cap":
                c = callers[rng.choice(["a1", "a2"])]
                ask(c, c.grants[0].import_id, 0, with_cap=True, caps=[object()])
            elif op == "promise":
                c = callers[rng.choice(["a1", "a2"])]
                opens = [q for (cid, q) in sent if cid == id(c)]
                if opens:
                    ask(c, c.grants[0].import_id, 1, with_cap=True, caps=[P.ReceiverAnswer(rng.choice(opens), (0,))])
            elif op == "answer":
                pend = [ev for ev in calls_at_calc() if ev.answer_id in calc.conn.answers
                        and not calc.conn.answers[ev.answer_id].returned]
                if pend:
                    ev = rng.choice(pend)
                    t = tag_of(ev.payload) or 0
                    k = rng.random()
                    if k < 0.3:
                        calc.send(calc.conn.send_exception(ev.answer_id, "nope"))
                    elif k < 0.6 and ev.payload.caps:
                        # call the promise/cap it was passed (a callback), then answer
                        cap = ev.payload.caps[0]
                        if isinstance(cap, P.Imported) and cap.import_id in calc.conn.imports:
                            calc.send(calc.conn.send_call(cap.import_id, 0xC0FFEE0000000003, 0, content(0))[1])
                        calc.send(calc.conn.send_return(ev.answer_id, content(t)))
                    else:
                        calc.send(calc.conn.send_return(ev.answer_id,
                                                        content(t, True), [object()]))
            elif op == "revoke":
                name = rng.choice(["a1.calc", "a2.calc", "a1.time", "a2.time"])
                for c in [callers["a1"]]:
                    c.deliver(router.revoke(name))
            elif op == "restart" and state["starting"] is None:
                calc.deliver(router.stop_engine("calc", "restart"))
                e, starts = start(router, "calc", exports=True, later=True)
                state["calc"], state["starting"] = e, starts
            elif op == "up" and state["starting"] is not None:
                starts, state["starting"] = state["starting"], None
                state["calc"].deliver(starts)
            elif op == "ext_new" and len(exts) < 3 and state["starting"] is None:
                exts.append(client(router, f"x{seed}_{step}"))
            elif op == "ext_call" and exts:
                c = rng.choice(exts)
                ask(c, c.grants[0].import_id, 0)
            elif op == "ext_gone" and exts:
                c = exts.pop(rng.randrange(len(exts)))
                c.deliver(router.disconnected(c.pid, "gone"))
                for key in [k for k in sent if k[0] == id(c)]:
                    done.add(sent.pop(key))
            elif op == "ext_finish" and exts:
                c = rng.choice(exts)
                opens = [q for (cid, q) in sent if cid == id(c)
                         and c.conn.questions.get(q) and not c.conn.questions[q].finished]
                if opens:
                    q = rng.choice(opens)
                    c.send(c.conn.send_finish(q))
                    done.add(sent[(id(c), q)])   # cancelled: must not reach calc from now
            elif op == "tick":
                now[0] += rng.choice([0.5, 2.0, 6.0])
                calc.deliver(router.expire())
            collect()
            internal()
            host_invariant()
            for ev in calls_at_calc():
                seen.add(id(ev)); keep.append(ev)
        except Violation as e:
            return f"seed {seed} step {step} op {op}: {e}\n  ops: {' '.join(log)}"
    # wind down
    try:
        if state["starting"] is not None:
            state["calc"].deliver(state["starting"])
            state["starting"] = None
            collect()
        for _ in range(20):
            calc = state["calc"]
            pend = [ev for ev in calls_at_calc() if ev.answer_id in calc.conn.answers
                    and not calc.conn.answers[ev.answer_id].returned]
            for ev in pend:
                calc.send(calc.conn.send_exception(ev.answer_id, "end"))
            collect()
        for ev in [ev for ev in store.inbox if isinstance(ev, P.CallReceived)
                   and ev.answer_id in store.conn.answers and not store.conn.answers[ev.answer_id].returned]:
            try:
                store.send(store.conn.send_exception(ev.answer_id, "end"))
            except KeyError:
                pass
        collect()
        for c in list(callers.values()) + exts:
            c.deliver(router.disconnected(c.pid, "end"))
        for c in list(callers.values()):       # the host layer finishes what it was given
            for h in c.host_calls:
                if router.host_call_live(h.token):
                    c.deliver(router.host_failed(h.token, "end"))
        collect()
        for imp in list(store.conn.imports):     # store lets go of what it was given
            store.send(store.conn.send_release(imp))
        collect()
        for imp in list(state["calc"].conn.imports):
            state["calc"].send(state["calc"].conn.send_release(imp))
        collect()
        cpeer = router.engines["calc"]
        leak = [i for i in cpeer.conn.imports if not (router.proxies["calc"].target is not None
                and router.proxies["calc"].target.import_id == i)
                and not (cpeer.control is not None and cpeer.control.import_id == i)]
        if leak:
            return f"seed {seed} end: router still imports {len(leak)} of calc's objects after every caller left\n  ops: {' '.join(log)}"
        if router._pipelined or router._promises or router.proxies["calc"].queue:
            return f"seed {seed} end: pipelined {len(router._pipelined)} promises {len(router._promises)} queue {len(router.proxies['calc'].queue)}\n  ops: {' '.join(log)}"
        state["calc"].deliver(router.disconnected(state["calc"].pid, "end"))
        store.deliver(router.disconnected(store.pid, "end"))
        now[0] += 1000
        router.expire()
        internal()
    except Violation as e:
        return f"seed {seed} wind-down: {e}\n  ops: {' '.join(log)}"
    probs = []
    if router.pipelined_bytes or router.pipelined_pooled:
        probs.append(f"pipelined_bytes {router.pipelined_bytes} pooled {router.pipelined_pooled}")
    if router._waiting:
        probs.append(f"_waiting {router._waiting}")
    if router.audit._open:
        probs.append(f"audit records never closed: {len(router.audit._open)}")
    if router._orphans or router._orphans_at:
        probs.append(f"orphans {router._orphans} {router._orphans_at}")
    if router._through:
        probs.append(f"_through {len(router._through)}")
    if router._pending:
        probs.append(f"_pending {len(router._pending)}")
    if probs:
        return f"seed {seed} end: {'; '.join(probs)}\n  ops: {' '.join(log)}"
    return None


def run(seeds, steps: int = 60) -> dict:
    """kind of failure -> the reports of the seeds that failed so."""
    fails: dict = {}
    for s in seeds:
        try:
            r = scenario(s, steps)
        except Exception:  # noqa: BLE001 - a crash is a finding like any other
            r = f"seed {s}: crash\n" + traceback.format_exc()
        if r:
            first = r.splitlines()[0]
            kind = first.split(": ", 1)[1][:50] if ": " in first else first
            fails.setdefault(kind, []).append(r)
    return fails


def _seeds(text: str) -> range:
    a, _, b = text.partition("-")
    return range(int(a), int(b or a) + 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-1000", help="a range, e.g. 1-5000")
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args(argv)
    seeds = _seeds(args.seeds)
    fails = run(seeds, args.steps)
    for kind, reports in fails.items():
        print(f"== {len(reports)} x {kind}\n{reports[0][-1500:]}\n")
    print(f"{len(seeds)} scenarios of {args.steps} steps: "
          + (f"{sum(map(len, fails.values()))} failed" if fails else "no failures"))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
