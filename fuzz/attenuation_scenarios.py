"""Random scenarios of attenuated capabilities passed on, with what they may reach checked.

    python -m fuzz.attenuation_scenarios --seeds 1-5000 --steps 400

Pure logic, no processes: the router (supervisor/router.py) with the hand-driven
engines and clients of tests/unit/test_router.py.  Compartment p1 holds the only
grant to calc, attenuated: an allow-list (Calc.add, Calc.newCounter, and
Counter.inc of the counters newCounter hands out, which the list names), a
`max_uses` quota, revocable.  p1, p2 and p3 hold grants to one another, and
external clients x1 and x2 hold p2's and p3's main objects.  Random steps: each
calls what it holds (any interface, any method) passing some of what it holds;
whoever was called answers, with some of what it holds or an object of its own;
calc calls back what it was passed;
calls whose answer has not come are pipelined on, or their promised capability
passed on (receiverAnswer); holders release what they hold; compartments restart,
clients reconnect; the grant is revoked.  So p1's capabilities to calc and its
counters travel several hops, through params and results, back to their owners
and out to external clients.

Whatever way a call comes to calc, the grant it was obtained through holds it:

* no call the allow-list refuses (Calc.sumTo, Counter methods but inc) reaches
  calc, on its main object or a counter;
* no more calls than `max_uses` reach calc, all holders together;
* no call reaches calc after the revocation or the grant's expiry (in some
  scenarios `expires_after`, time passing a second a step), and none of calc's calls back on
  what it was passed (through the grant's reverse) reaches anyone after either;
* with `--leaks` (and in the tests): once every engine and client is gone, the
  router holds nothing for any of it (membranes' wrappers, calls in flight,
  promises, quota holds).

Only a capability passed on *bare* (a wrapper unwrapped, a membrane skipped on
the way) breaks these: the tests check that the scenarios find both.
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
from tests.unit.test_router import (CALC, NAMES, P, R, Content, FakeEngine,  # noqa: E402
                                    client, grant, start)

COUNTER = 0xC0FFEE0000000002
RELAY = 0xC0FFEE00000000AA          # p1, p2 and p3's own interface
ALLOW = frozenset({(CALC, 0), (CALC, 1), (COUNTER, 0)})
EXTERNAL = {"x1": "p2", "x2": "p3"}


CALLBACK_TAG = 0xCA11BAC4
CALLBACK = Content.standalone([struct.pack("<QQ", 1 << 32, CALLBACK_TAG)])


def _tag(content: Content):
    try:
        seg = wire.unframe(content.single_segment_copy())[0]
        return struct.unpack_from("<Q", seg, 8)[0] if len(seg) >= 16 else None
    except Exception:  # noqa: BLE001 - not ours
        return None


def _results(ncaps: int) -> Content:
    """Results whose root holds `ncaps` capabilities (the cap table's, in order)."""
    if not ncaps:
        return Content()
    seg = struct.pack("<Q", ncaps << 48) + b"".join(
        struct.pack("<Q", wire.cap_pointer(i)) for i in range(ncaps))
    return Content.standalone([seg])


def scenario(seed: int, steps: int = 400, leaks: bool = False,
             revoke: bool = True) -> str | None:
    """One random scenario; None if every check held, else what broke and the
    steps that led there."""
    rng = random.Random(seed)
    max_uses = rng.randint(3, 40)
    names = dict(NAMES)
    names[RELAY] = ("Relay", {0: "a", 1: "b"})
    # the grant expires (expires_after) in some scenarios, time passing a step at a
    # time; call_time long enough that no call times out meanwhile
    now = [0.0]
    expires = rng.choice([None, None, rng.uniform(50, 400)])
    router = R.Router({"calc": CALC, "p1": RELAY, "p2": RELAY, "p3": RELAY}, names=names,
                      external=tuple(EXTERNAL.values()), clock=lambda: now[0],
                      limits={n: R.Limits(call_time=1e6) for n in ("calc", "p1", "p2", "p3")},
                      external_limits=R.Limits(call_time=1e6))
    FakeEngine.all = {}
    calc = start(router, "calc", exports=True)
    bad: list[str] = []
    log: list[str] = []
    seen = {"arrived": 0, "revoked": False}
    counters: list = []

    real_feed = calc.feed

    def feed(data):
        """Every call as it reaches calc, checked there."""
        before = len(calc.inbox)
        real_feed(data)
        for ev in calc.inbox[before:]:
            if not isinstance(ev, P.CallReceived):
                continue
            seen["arrived"] += 1
            what = "main" if ev.target is calc.main else \
                "counter" if any(ev.target is c for c in counters) else repr(ev.target)
            log.append(f"calc gets {what} {ev.interface_id:#x}.{ev.method_id}")
            if seen["revoked"]:
                bad.append(f"a call reached calc after the revocation: {log[-1]}")
            if expires is not None and now[0] >= expires:
                bad.append(f"a call reached calc after the grant expired: {log[-1]}")
            if seen["arrived"] > max_uses:
                bad.append(f"{seen['arrived']} calls reached calc through a grant of "
                           f"max_uses {max_uses}")
            if ev.interface_id in (CALC, COUNTER) and (ev.interface_id, ev.method_id) \
                    not in ALLOW:
                bad.append(f"a call the allow-list refuses reached calc: {log[-1]}")
    calc.feed = feed

    calc_held: list = []

    def watched(e):
        """A holder whose every incoming call is checked: none of calc's (all it
        holds came through p1's grant) once the grant is revoked."""
        real = e.feed

        def feed(data):
            before = len(e.inbox)
            real(data)
            for ev in e.inbox[before:]:
                if isinstance(ev, P.CallReceived) and ev.payload is not None \
                        and ev.payload.content.size() and _tag(ev.payload.content) == CALLBACK_TAG:
                    log.append(f"{e.name} gets calc's call back")
                    if seen["revoked"] or expires is not None and now[0] >= expires:
                        bad.append(f"calc's call back reached {e.name} after the "
                                   f"revocation or the expiry")
        e.feed = feed
        return e

    grants = {}
    holders: dict = {}
    for n in ("p3", "p2", "p1"):
        gs = [grant("calc", "calc", methods=ALLOW, mentioned=(COUNTER,), revocable=True,
                    max_uses=max_uses, expires_after=expires)] if n == "p1" else []
        gs += [grant(o, o) for o in ("p1", "p2", "p3") if o != n]
        grants[n] = gs
        holders[n] = watched(start(router, n, gs, exports=True))
    for x, target in EXTERNAL.items():
        holders[x] = watched(client(router, x, target))
    held = {n: [g.import_id for g in e.grants.values()] for n, e in holders.items()}

    def take_returns():
        for n, e in holders.items():
            for ev in [ev for ev in e.inbox if isinstance(ev, P.ReturnReceived)]:
                e.inbox.remove(ev)
                for c in ev.payload.caps if ev.payload else ():
                    if hasattr(c, "import_id"):
                        held[n].append(c.import_id)

    for _step in range(steps):
        now[0] += 1.0
        op = rng.random()
        n = rng.choice(list(holders))
        e = holders[n]
        # (what its connection let go of meanwhile, an answer's capabilities that
        # came for a question it had finished, is not held any more)
        held[n] = [i for i in held[n] if i in e.conn.imports]
        if op < 0.40:                               # a call, passing some of what it holds
            if not held[n]:
                continue
            h = rng.choice(held[n])
            iface, method = rng.choice([CALC, CALC, COUNTER, COUNTER, RELAY]), rng.randrange(3)
            caps = [RemoteRef(rng.choice(held[n])) for _ in range(rng.choice([0, 0, 1, 2, 4]))]
            log.append(f"{n} calls #{h} {iface:#x}.{method} passing "
                       f"{[c.import_id for c in caps]}")
            e.send(e.conn.send_call(h, iface, method, Content(), caps)[1])
        elif op < 0.55:                             # a promise passed on, or pipelined on
            if not held[n]:
                continue
            h = rng.choice(held[n])
            q, data = e.conn.send_call(h, rng.choice([CALC, RELAY, COUNTER]),
                                       rng.choice([0, 1, 1]), Content(), [])
            e.send(data)
            if q not in e.conn.questions:           # answered (refused) at once, finished
                continue
            if rng.random() < 0.5:
                t = rng.choice(held[n])
                log.append(f"{n} calls #{h} (q{q}) and passes its promise to #{t}")
                e.send(e.conn.send_call(t, rng.choice([RELAY, CALC]), rng.randrange(2),
                                        Content(), [P.ReceiverAnswer(q, (0,))])[1])
            else:
                log.append(f"{n} calls #{h} (q{q}) and pipelines on it")
                e.send(e.conn.send_call((q, (0,)), rng.choice([CALC, COUNTER]),
                                        rng.randrange(3), Content(), [])[1])
        elif op < 0.90:                             # someone answers a call it got
            got = [(m, x) for m, x in [*holders.items(), ("calc", calc)]
                   if any(isinstance(ev, P.CallReceived) for ev in x.inbox)]
            if not got:
                continue
            n, e = rng.choice(got)
            ev = rng.choice([ev for ev in e.inbox if isinstance(ev, P.CallReceived)])
            e.inbox.remove(ev)
            if n == "calc":
                for c in ev.payload.caps if ev.payload else ():
                    if hasattr(c, "import_id"):
                        calc_held.append(c.import_id)
                if (ev.interface_id, ev.method_id) == (CALC, 1):      # newCounter
                    counters.append(object())
                    e.send(e.conn.send_return(ev.answer_id, _results(1), [counters[-1]]))
                else:
                    e.send(e.conn.send_return(ev.answer_id))
                continue
            for c in ev.payload.caps if ev.payload else ():
                if hasattr(c, "import_id"):
                    held[n].append(c.import_id)
            caps = [RemoteRef(rng.choice(held[n])) for _ in range(rng.choice([0, 0, 1, 2]))] \
                if held[n] else []
            if rng.random() < 0.2:
                own = object()                      # an object of its own, maybe twice
                caps += [own] * rng.choice([1, 1, 2])
            log.append(f"{n} answers with {len(caps)} capabilities")
            e.send(e.conn.send_return(ev.answer_id, _results(len(caps)), caps))
        elif op < 0.97:
            if rng.random() < 0.5 and held[n]:      # it lets go of one
                imp = held[n].pop(rng.randrange(len(held[n])))
                if imp not in held[n]:              # (held twice: kept)
                    log.append(f"{n} releases #{imp}")
                    e.send(e.conn.send_release(imp))
            elif n in EXTERNAL:
                e.deliver(router.disconnected(e.pid, "gone"))
                holders[n] = watched(client(router, n, EXTERNAL[n]))
                held[n] = [g.import_id for g in holders[n].grants.values()]
                log.append(f"{n} reconnects")
            else:
                e.deliver(router.stop_engine(n, "crash"))
                holders[n] = watched(start(router, n, grants[n], exports=True))
                held[n] = [g.import_id for g in holders[n].grants.values()]
                log.append(f"{n} restarts")
        elif op < 0.985:                            # calc calls back what it was passed
            calc_held[:] = [i for i in calc_held if i in calc.conn.imports]
            if calc_held:
                h = rng.choice(calc_held)
                log.append(f"calc calls back #{h}")
                calc.send(calc.conn.send_call(h, rng.choice([RELAY, CALC]), rng.randrange(2),
                                              CALLBACK)[1])
        elif revoke and not seen["revoked"] and rng.random() < 0.3:
            seen["revoked"] = True
            log.append("p1.calc revoked")
            holders["p1"].deliver(router.revoke("p1.calc"))
        take_returns()
        if bad:
            return bad[0] + "\n  " + "\n  ".join(log[-25:])
    if leaks:
        for n, e in holders.items():
            if n in EXTERNAL:
                e.deliver(router.disconnected(e.pid, "gone"))
            else:
                e.deliver(router.stop_engine(n, "crash"))
                e.deliver(router.fail_compartment(n, "gone"))
        calc.deliver(router.stop_engine("calc", "crash"))
        calc.deliver(router.fail_compartment("calc", "gone"))
        left = {label: (len(m.wrappers), len(m.reverse.wrappers), len(m.inflight), m.held)
                for label, m in router.membranes.items()
                if m.wrappers or m.reverse.wrappers or m.inflight or m.held}
        tables = {k: len(getattr(router, k)) for k in (
            "_through", "_promises", "_pending", "_host_calls", "_waiting", "_spent",
            "_sealed") if getattr(router, k, None)}
        if left or tables:
            return (f"held after every engine and client went: membranes {left}, "
                    f"tables {tables}\n  " + "\n  ".join(log[-15:]))
    return None


def run(seeds, steps: int = 400, leaks: bool = False, revoke: bool = True) -> dict:
    """kind of failure -> the reports of the seeds that failed so."""
    fails: dict = {}
    for s in seeds:
        try:
            r = scenario(s, steps, leaks, revoke)
        except Exception:  # noqa: BLE001 - a crash is a finding like any other
            r = f"seed {s}: crash\n" + traceback.format_exc()
        if r:
            fails.setdefault(r.splitlines()[0][:50], []).append(f"seed {s}: {r}")
    return fails


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1-1000", help="a range, e.g. 1-5000")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--leaks", action="store_true",
                    help="check that nothing is held once everyone is gone")
    ap.add_argument("--no-revoke", action="store_true",
                    help="never revoke (quotas and leaks checked over whole scenarios)")
    args = ap.parse_args(argv)
    from .router_scenarios import _seeds, report
    seeds = _seeds(args.seeds)
    return report(run(seeds, args.steps, args.leaks, not args.no_revoke), seeds, args.steps)


if __name__ == "__main__":
    sys.exit(main())
