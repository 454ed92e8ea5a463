"""A randomized stress of the router with a real Cap'n Proto client (pycapnp), small.

tests/rpcstress.py does random sequences of calls, pipelined calls, promises
passed in calls (receiverAnswer), capabilities passed between connections,
references dropped early, cancellations and connections closed mid-way, over
several connections to calc and an Echo, and checks every result.  Here: one
fixed seed, a few hundred operations.  The long run, under CPU load, many seeds:

    .venv/bin/python -m fuzz.rpc_stress --seeds 1-50 --ops 400 --conns 4 --load 2

(or set WSUPER_RPC_STRESS=SEEDS,OPS, e.g. 1-20,400, to run it here).

Found with it and fixed (each with a unit test): answers swapped between an
engine's nested calls (seed 7 failed: an answer read with a call went to the
call's question, which had been given the answer's freed id), references
released for calls not yet dispatched, waiting calls' capabilities released,
answers given up still exporting, a client's own object released before its
Finish.
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
