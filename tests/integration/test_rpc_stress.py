"""A randomized stress of the router with a real Cap'n Proto client (pycapnp), small.

tests/rpcstress.py does random sequences of calls, pipelined calls, promises
passed in calls (receiverAnswer), capabilities passed between connections,
references dropped early, cancellations and connections closed mid-way, over
several connections to calc and an Echo, and checks every result.  Here: one
fixed seed, a few hundred operations.  The long run, under CPU load, many seeds:

    .venv/bin/python -m fuzz.rpc_stress --seeds 1-50 --ops 400 --conns 4 --load 2

(or set WSUPER_RPC_STRESS=SEEDS,OPS, e.g. 1-20,400, to run it here).

Open (not fixed): seed 7 with 150 ops (`python -m fuzz.rpc_stress --seeds 7 --ops
150 --load 0`) fails about one run in five, at its op #71 (before the engine and
router fixes of 2026-12-04 it failed every time, and other seeds too): calc's
Observer.step calls fail "compartment external is gone: external client
disconnected".  What is known: the supervisor forwards calc's step to the
client's own export (which it still imports: it has sent no Release for it), and
then reads ECONNRESET on that connection, which the harness had not closed (an
strace of the client showed closes only where the harness closes connections):
the client's side drops a connection it is using.  Not known: why; the supervisor's messages to it were
checked (releaseParamCaps false on every Return, no Release before the calls).
With the fast lane off (WSUPER_NATIVE=0) it fails more often (6 of 6 runs of up
to ten passes), so the pure-Python path shows it too.
"""
import os

import pytest

from tests import rpcstress

pytestmark = pytest.mark.interop


def _plan():
    env = os.environ.get("WSUPER_RPC_STRESS")
    if not env:
        return [2], 150
    seeds, _, ops = env.partition(",")
    a, _, b = seeds.partition("-")
    return list(range(int(a), int(b or a) + 1)), int(ops or 300)


def test_random_rpc_sequences_from_pycapnp_clients_leave_nothing_behind(tmp_path, wsuper):
    system = rpcstress.write_system(str(tmp_path))
    run = wsuper("up", system)
    run.wait_for("ready calc")
    run.wait_for("ready echo")
    seeds, ops = _plan()
    for seed in seeds:
        stats = rpcstress.drive(str(tmp_path / "ext.sock"), str(tmp_path), seed, ops, conns=3,
                                timeout=120)
        # the client let go of every object of its own: the supervisor did too
        assert stats["observers_left"] == 0, (seed, stats)
        assert stats.get("ok:final_add") == 3
        assert run.proc.poll() is None, "the supervisor exited"
        # nothing left in the compartments for clients that are gone
        assert rpcstress.leftovers(system) == [], seed
        assert all(c["restarts"] == 0
                   for c in rpcstress.status(system)["compartments"]), seed
    run.stop()
    lines = run.lines[:next((i for i, line in enumerate(run.lines) if "SIGTERM" in line),
                            len(run.lines))]
    assert rpcstress.bad_lines(lines) == []
