"""A randomized stress of the router with real Cap'n Proto (pycapnp, C++ RPC) clients.

Several connections to a running system's external socket (calc and echo of
tests/integration/test_promised_caps.py) do random sequences of: calc.add,
calc.newCounter (pipelined inc on the unreturned answer), calc.sumTo with an
Observer of their own (or one promised by an unreturned echo.hold: receiverAnswer),
echo.hold of their own objects, of capabilities obtained on another connection
(senderPromise / senderHosted through the client), of promises; pipelined calls
on unawaited results; references dropped early (del + gc, so that Release and
Finish race with answers); calls cancelled (asyncio task cancel); connections
closed with calls in flight and opened again.

Every awaited result is checked: right, or a capnp.KjException with a reason
(the ones a polite client may meet are listed in EXPECTED_FAILURES).  `run`
returns counts; the caller checks the supervisor's side (its event lines, its
status after the clients close).

Used by tests/integration/test_rpc_stress.py (small, fixed seed) and by
`python -m fuzz.rpc_stress` (long, under CPU load).
"""
from __future__ import annotations

import asyncio
import gc
import os
import random

ECHO_ID = 0xC0FFEE00000000E2

SCHEMA = f"""@0xd0a1b2c3d4e5f6a8;
interface Echo @{ECHO_ID:#x} {{
  hold @0 (cap :Capability) -> (cap :Capability);
}}
"""

# Echo.hold returns the params it got, capability included.
ECHO_WAT = """(module
  (import "wsuper" "params_read" (func $params_read (param i32 i32) (result i32)))
  (import "wsuper" "results_set" (func $results_set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "wsuper_dispatch")
        (param $obj i32) (param $iface i64) (param $method i32) (param $len i32)
        (param $ncaps i32) (result i32)
    (if (i32.or (i32.gt_u (local.get $len) (i32.const 4096))
                (i32.gt_u (local.get $ncaps) (i32.const 16)))
      (then (return (i32.const 1))))
    (drop (call $params_read (i32.const 0) (i32.const 4096)))
    (drop (call $results_set (i32.const 0) (local.get $len) (i32.const 4096)
                             (local.get $ncaps)))
    (i32.const 0)))
"""

SYSTEM = """
[system]
schemas = ["{examples}/calc.capnp", "{tmp}/echo.capnp"]
socket = "{tmp}/ext.sock"
audit = "{tmp}/audit.jsonl"

[compartments.calc]
module = "{examples}/calc.wat"
exports = "Calc"
external = true

[compartments.echo]
module = "{tmp}/echo.wat"
exports = "Echo"
external = true
"""

#: Reasons a polite client may be given for a failed call in this harness: its
#: own connection closed under it (it closed it), a capability from a connection
#: it closed, calc's counter limit, or an observer it had let go of.
EXPECTED_FAILURES = (
    "disconnected", "Disconnected", "connection closed", "Connection closed",
    "Peer disconnected", "canceled", "cancelled", "released", "is gone",
    "broken", "Broken",
)


def write_system(tmp) -> str:
    """The system file (and echo's schema and module) in directory `tmp`."""
    from tests.conftest import EXAMPLES
    with open(os.path.join(tmp, "echo.capnp"), "w") as f:
        f.write(SCHEMA)
    with open(os.path.join(tmp, "echo.wat"), "w") as f:
        f.write(ECHO_WAT)
    path = os.path.join(tmp, "system.toml")
    with open(path, "w") as f:
        f.write(SYSTEM.format(examples=EXAMPLES, tmp=tmp))
    return path


class Bad(AssertionError):
    """A wrong result, or a failure a polite client should not meet."""


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


class Stats(dict):
    def bump(self, key, n=1):
        self[key] = self.get(key, 0) + n


class _Conn:
    def __init__(self, n, stream, client, calc, echo):
        self.n, self.stream, self.client, self.calc, self.echo = n, stream, client, calc, echo
        self.objects: list = []       # (kind, cap, expected-state) obtained on it
        self.closed = False


OPS = ("add", "add", "counter", "counter_pipelined", "sumto_own", "sumto_promise",
       "hold_own_pipelined", "hold_other_conn", "hold_promise_chain", "drop_early",
       "cancel", "close_conn", "counter_cross", "hold_counter_from_other",
       "sumto_via_other_conn")


async def run(sock: str, seed: int, ops: int, conns: int = 3, calc_schema=None,
              echo_schema=None, log=None, only=None) -> Stats:
    """`ops` random operations over `conns` connections at a time; raises Bad on a
    wrong answer or an unexpected failure.  Must run inside capnp.kj_loop()."""
    import capnp
    rng = random.Random(seed)
    stats = Stats()
    calc_s, echo_s = calc_schema, echo_schema
    gateway_s = __import__("capnp_schemas").host.Gateway
    observers_alive = [0]
    counter = [0]

    class Observer(calc_s.Observer.Server):
        def __init__(self, slow=0.0):
            observers_alive[0] += 1
            self.slow = slow
            self.steps = []

        def __del__(self):
            observers_alive[0] -= 1

        async def step(self, i, partial, **_):
            self.steps.append((i, partial))
            if self.slow:
                await asyncio.sleep(self.slow)

    async def connect():
        counter[0] += 1
        stream = await capnp.AsyncIoStream.create_unix_connection(sock)
        client = capnp.TwoPartyClient(stream)
        gw = client.bootstrap().cast_as(gateway_s)
        calc = gw.get("calc").cap.cast_as(calc_s.Calc)
        echo = gw.get("echo").cap.cast_as(echo_s.Echo)
        return _Conn(counter[0], stream, client, calc, echo)

    def note(msg):
        if log is not None:
            log(msg)

    async def expect(coro, what, check=None, may_fail=False):
        """Await `coro`; its result must pass `check`; a failure must be clear."""
        try:
            r = await coro
        except capnp.KjException as e:
            text = str(e)
            if "internal error" in text:
                raise Bad(f"{what}: internal error reached the client: {text}")
            if not may_fail and not any(x in text for x in EXPECTED_FAILURES):
                raise Bad(f"{what}: unexpected failure: {text}")
            stats.bump("failed:" + what)
            note(f"{what} failed: {text.splitlines()[0][:200]}")
            return None
        if check is not None:
            ok = check(r)
            if not ok:
                raise Bad(f"{what}: wrong result {r}")
        stats.bump("ok:" + what)
        return r

    live = [await connect() for _ in range(conns)]
    graveyard: list = []
    background: set = set()

    def pick():
        return rng.choice(live)

    def other(c):
        cands = [x for x in live if x is not c]
        return rng.choice(cands) if cands else c

    kinds = tuple(only) if only else OPS
    for step in range(ops):
        c = pick()
        op = rng.choice(kinds)
        stats.bump("op:" + op)
        note(f"#{step} conn{c.n} {op}")
        # each operation in its own frame: what it held goes when it ends
        async def one(c, op):
            if op == "add":
                a, b = rng.randrange(-2**31, 2**31), rng.randrange(-2**31, 2**31)
                await expect(c.calc.add(a, b), "add", lambda r, a=a, b=b: r.sum == _i32(a + b))
            elif op == "counter":
                cnt = (await expect(c.calc.newCounter(), "newCounter", may_fail=True))
                if cnt is not None:
                    cnt = cnt.counter
                    v = 0
                    for _ in range(rng.randrange(1, 4)):
                        by = rng.randrange(1, 100)
                        v += by
                        await expect(cnt.inc(by), "inc", lambda r, v=v: r.value == v)
                    c.objects.append(("counter", cnt, v))
            elif op == "counter_pipelined":
                p = c.calc.newCounter()
                by = rng.randrange(1, 100)
                q = p.counter.inc(by)                     # pipelined on the unreturned answer
                if rng.random() < 0.5:
                    del p
                    gc.collect()
                await expect(q, "inc_pipelined", lambda r, by=by: r.value == by, may_fail=True)
            elif op == "sumto_own":
                n = rng.randrange(0, 6)
                obs = Observer()
                r = await expect(c.calc.sumTo(n, obs), "sumTo_own",
                                 lambda r, n=n: r.total == n * (n + 1) // 2)
                if r is not None and obs.steps != [(i, i * (i + 1) // 2) for i in range(1, n + 1)]:
                    raise Bad(f"sumTo_own: observer saw {obs.steps}")
                del obs
            elif op == "sumto_promise":
                n = rng.randrange(1, 5)
                obs = Observer()
                held = c.echo.hold(cap=obs).cap           # not returned yet: receiverAnswer
                del obs
                r = c.calc.sumTo(n, held.cast_as(calc_s.Observer))
                if rng.random() < 0.5:
                    del held
                    gc.collect()
                await expect(r, "sumTo_promise", lambda r, n=n: r.total == n * (n + 1) // 2)
            elif op == "hold_own_pipelined":
                obs = Observer()
                held = c.echo.hold(cap=obs).cap.cast_as(calc_s.Observer)
                first = held.step(1, 1)
                second = held.step(2, 3)
                drop_obs = rng.random() < 0.5
                if drop_obs:
                    del obs
                    gc.collect()
                await expect(first, "step_pipelined")
                await expect(second, "step_pipelined")
                await expect(held.step(3, 6), "step_resolved")
                if not drop_obs and obs.steps != [(1, 1), (2, 3), (3, 6)]:
                    raise Bad(f"hold_own_pipelined: observer saw {obs.steps}")
                del held
            elif op == "hold_other_conn":
                # a capability of connection A (its echo's answer) passed to B's echo
                d = other(c)
                obs = Observer()
                a_held = c.echo.hold(cap=obs).cap           # promise on A
                if rng.random() < 0.5:
                    await expect(a_held.cast_as(calc_s.Observer).step(7, 7), "step_on_a")
                b_held = d.echo.hold(cap=a_held).cap.cast_as(calc_s.Observer)
                if rng.random() < 0.5:
                    del a_held
                    gc.collect()
                await expect(b_held.step(8, 8), "step_via_b")
                n = rng.randrange(1, 4)
                await expect(d.calc.sumTo(n, b_held), "sumTo_via_b",
                             lambda r, n=n: r.total == n * (n + 1) // 2)
                del b_held
            elif op == "hold_promise_chain":
                obs = Observer()
                p1 = c.echo.hold(cap=obs).cap
                p2 = c.echo.hold(cap=p1).cap
                p3 = c.echo.hold(cap=p2).cap.cast_as(calc_s.Observer)
                del obs
                if rng.random() < 0.5:
                    del p1, p2
                    gc.collect()
                n = rng.randrange(1, 4)
                await expect(c.calc.sumTo(n, p3), "sumTo_chain",
                             lambda r, n=n: r.total == n * (n + 1) // 2)
                await expect(p3.step(9, 9), "step_chain")
            elif op == "drop_early":
                # send, drop every reference before the answer: Finish races the return
                obs = Observer()
                choice = rng.randrange(4)
                if choice == 0:
                    p = c.echo.hold(cap=obs)
                    q = p.cap.cast_as(calc_s.Observer).step(1, 1)
                    del p
                elif choice == 1:
                    p = c.calc.newCounter()
                    q = p.counter.inc(1)
                    del p
                elif choice == 2:
                    p = c.calc.sumTo(rng.randrange(1, 4), obs)
                    q = None
                    del p
                else:
                    p = c.echo.hold(cap=c.echo.hold(cap=obs).cap)
                    q = p.cap.cast_as(calc_s.Observer).step(2, 2)
                    del p
                del obs
                gc.collect()
                if q is not None and rng.random() < 0.7:
                    await expect(q, "after_drop", may_fail=True)
                else:
                    del q
                    gc.collect()
                stats.bump("dropped")
            elif op == "cancel":
                obs = Observer(slow=rng.choice((0.0, 0.001, 0.01)))
                kind = rng.randrange(3)
                if kind == 0:
                    coro = c.calc.sumTo(rng.randrange(1, 8), obs)
                elif kind == 1:
                    coro = c.calc.sumTo(rng.randrange(1, 8),
                                        c.echo.hold(cap=obs).cap.cast_as(calc_s.Observer))
                else:
                    coro = c.echo.hold(cap=obs).cap.cast_as(calc_s.Observer).step(1, 1)

                async def awaited(coro=coro):
                    return await coro
                t = asyncio.ensure_future(awaited())
                await asyncio.sleep(rng.choice((0, 0, 0.0005, 0.003)))
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    stats.bump("cancelled")
                except capnp.KjException as e:
                    if "internal error" in str(e):
                        raise Bad(f"cancel: {e}")
                del obs, coro, t
                gc.collect()
            elif op == "close_conn":
                # close with calls in flight (left running in the background)
                obs = Observer(slow=0.002)
                inflight = [c.calc.sumTo(rng.randrange(1, 6), obs),
                            c.echo.hold(cap=obs).cap.cast_as(calc_s.Observer).step(1, 1),
                            c.calc.add(1, 2)]
                await asyncio.sleep(rng.choice((0, 0.0005, 0.002)))
                for x in inflight:
                    async def swallow(x=x):
                        try:
                            await x
                        except capnp.KjException as e:
                            if "internal error" in str(e):
                                raise Bad(f"in flight at close: {e}")
                    background.add(asyncio.ensure_future(swallow()))
                live.remove(c)
                c.closed = True
                c.objects.clear()
                # closed at the stream (its asyncio transport); the objects stay
                # until the end (TwoPartyClient.close() and then the objects'
                # destruction could close another connection of this process)
                c.stream.close()
                graveyard.append(c)
                del obs, inflight
                gc.collect()
                live.append(await connect())
                stats.bump("reconnected")
            elif op == "counter_cross":
                # a counter from A, passed through B's echo: B's calls reach A's counter
                held = [o for o in c.objects if o[0] == "counter"]
                if not held:
                    return
                i = rng.randrange(len(held))
                _k, cnt, v = held[i]
                d = other(c)
                via = d.echo.hold(cap=cnt).cap.cast_as(calc_s.Counter)
                r = await expect(via.inc(5), "inc_via_other", may_fail=True)
                if r is not None:
                    if r.value != v + 5:
                        raise Bad(f"inc_via_other: {r.value} != {v + 5}")
                    c.objects[c.objects.index(held[i])] = ("counter", cnt, v + 5)
                if rng.random() < 0.3:
                    c.objects.remove(("counter", cnt, r.value if r is not None else v)
                                     if r is not None else held[i])
                del via
            elif op == "hold_counter_from_other":
                # B's unreturned newCounter promise passed into B's echo, then called from A
                d = other(c)
                p = d.calc.newCounter().counter
                via = c.echo.hold(cap=d.echo.hold(cap=p).cap).cap.cast_as(calc_s.Counter)
                del p
                if rng.random() < 0.5:
                    gc.collect()
                await expect(via.inc(3), "inc_promise_cross", lambda r: r.value == 3, may_fail=True)
                del via
            elif op == "sumto_via_other_conn":
                # an observer held by A's echo (a promise of A) passed to B's calc
                d = other(c)
                obs = Observer()
                a_held = c.echo.hold(cap=obs).cap.cast_as(calc_s.Observer)
                n = rng.randrange(1, 4)
                r = d.calc.sumTo(n, a_held)
                if rng.random() < 0.5:
                    del a_held
                    gc.collect()
                await expect(r, "sumTo_other_conn", lambda r, n=n: r.total == n * (n + 1) // 2)
                del obs

        await one(c, op)
        gc.collect()
        if rng.random() < 0.05:
            gc.collect()
        # bound the objects kept per connection
        for x in live:
            while len(x.objects) > 8:
                x.objects.pop(rng.randrange(len(x.objects)))

    for t in list(background):
        try:
            await asyncio.wait_for(t, 10)
        except (asyncio.TimeoutError, capnp.KjException):
            pass
    # the connections still open must work, then they close
    for c in live:
        await expect(c.calc.add(2, 3), "final_add", lambda r: r.sum == 5)
    # every observer the client let go of is released by the supervisor too (an
    # import it keeps would keep the client's object alive while the connection is)
    for c in live:
        c.objects.clear()
    for _ in range(50):
        gc.collect()
        for c in live:
            await c.calc.add(0, 0)
        if observers_alive[0] == 0:
            break
        await asyncio.sleep(0.05)
    stats["observers_left"] = observers_alive[0]
    for c in live:
        c.objects.clear()
        del c.calc, c.echo, c.client, c.stream
    live.clear()
    background.clear()
    gc.collect()
    stats["connections"] = counter[0]
    return stats


_SCHEMAS: list = []        # (calc, echo), loaded once per process (an id loads once)


def schemas(tmp):
    import capnp_schemas
    from tests.conftest import EXAMPLES
    if not _SCHEMAS:
        _SCHEMAS.append((capnp_schemas.load(os.path.join(EXAMPLES, "calc.capnp")),
                         capnp_schemas.load(os.path.join(tmp, "echo.capnp"))))
    return _SCHEMAS[0]


def drive(sock: str, tmp: str, seed: int, ops: int, conns: int = 3, timeout: float = 600,
          log=None, only=None) -> Stats:
    """`run` in a fresh asyncio loop and kj loop of this process."""
    import capnp
    calc_s, echo_s = schemas(tmp)

    async def main():
        async with capnp.kj_loop():
            return await run(sock, seed, ops, conns, calc_s, echo_s, log, only)

    async def bounded():
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


#: Supervisor event lines that mean a bug here: the choke point caught a fault,
#: or a peer (a compartment or a polite client) was cut off or restarted.
BAD_EVENTS = ("internal error", "connection aborted", "protocol error", "restarting",
              "exited", "crashed", "Traceback")


def bad_lines(lines) -> list:
    return [line for line in lines if any(b in line for b in BAD_EVENTS)]


def status(system: str) -> dict:
    """`wsuper status --json` of the running system."""
    import json
    import subprocess
    import sys
    from tests.conftest import ROOT
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "status", "--json", system],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise Bad(f"wsuper status failed: {r.stderr}")
    return json.loads(r.stdout)


def leftovers(system: str, settle: float = 5.0) -> list:
    """What the compartments still hold or wait on once every client is gone:
    capabilities passed to them (handles) and calls from or to them; [] when
    clean.  Waits up to `settle` seconds for late answers and releases."""
    import time
    deadline = time.monotonic() + settle
    while True:
        st = status(system)
        left = [(c["name"], {k: c.get(k) for k in ("handles", "calls_from", "calls_to")})
                for c in st["compartments"]
                if c.get("handles") or c.get("calls_from") or c.get("calls_to")]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
