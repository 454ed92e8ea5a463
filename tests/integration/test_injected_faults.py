"""The class of issue 10 ("one call from any plugin or local client can end the
supervisor and every compartment"), attacked from the inside: a real system (real
engines, real external clients, the admin socket), in a supervisor whose per-peer
code is made to raise an unexpected exception at one point at a time
(tests/faults.py, tests/faultcases.py).  Each time the supervisor lives on, the
other compartments still answer, the faulted peer is cut off (or its request
answered with an error) and comes back, and a line names what happened.
`python -m fuzz.faults` runs the same with every kind of exception, in a random
order."""
import pytest

from tests import faultcases as FC


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    """One system for all the points, started again only if a point ended it (a
    failure then fails that point alone)."""
    tmp = tmp_path_factory.mktemp("faults")
    FC.write_system(tmp)
    held = []
    try:
        yield tmp, held
    finally:
        for run in held:
            run.stop()


@pytest.fixture
def system(systems):
    tmp, held = systems
    if not held or held[-1].proc.poll() is not None:
        held.append(FC.start(tmp))
    return held[-1], str(tmp / "ext.sock"), str(tmp / "system.toml")


@pytest.mark.parametrize("point", list(FC.CASES))
def test_a_fault_inside_one_peers_handling_cuts_off_that_peer_only(system, point):
    run, sock, toml = system
    ticker = FC.TICKERS[list(FC.CASES).index(point) % len(FC.TICKERS)]
    FC.check(run, sock, toml, point, "runtime", ticker)


@pytest.mark.parametrize("point,kind", [
    ("engine-end", "group"), ("engine-end", "os"), ("engine-end", "key"),
    # a group is said by what it holds, at the router's choke point too
    ("host-done", "group"),
    # a KeyError of a fault inside revoke is no "no revocable grant"
    ("revoke", "key")])
def test_other_kinds_of_exception_at_a_point(system, point, kind):
    run, sock, toml = system
    FC.check(run, sock, toml, point, kind, "t1")


def test_a_fault_in_an_engines_loop_ends_that_engine_with_a_line_saying_so(system):
    """An exception the engine's loop does not expect (here: as it sends an answer)
    ends that engine, saying why in one line the supervisor passes on; it is
    restarted, and nothing waits for it."""
    run, sock, _toml = system
    start, before = len(run.lines), FC.pid(run, "victim")
    assert isinstance(FC.add_error(sock, 1000000007), Exception)
    line = run.wait_for("restarting victim", start=start, timeout=10)
    assert "engine exited with code 70: error: internal error in the engine " \
           "(FaultInjected: injected at engine-loop)" in line, line
    run.wait_for("ready victim", start=start, timeout=10)
    assert FC.pid(run, "victim") != before
    assert FC.add(sock, 2, 3, "victim") == 5 and FC.add(sock, 20, 22, "other") == 42
    assert run.proc.poll() is None


def test_a_fault_in_handling_one_call_in_an_engine_fails_that_call_only(system):
    run, sock, _toml = system
    start, before = len(run.lines), FC.pid(run, "victim")
    e = FC.add_error(sock, 1000000009)
    assert "the engine could not handle this call (FaultInjected" in str(e), e
    assert FC.add(sock, 2, 3, "victim") == 5 and FC.pid(run, "victim") == before
    assert not [x for x in run.lines[start:] if "victim" in x and "fault" not in x]


def test_a_few_random_faults_of_the_fuzz_command_break_nothing():
    from fuzz import faults as FF
    done, failures = FF.run(8, seed=20261207)
    assert done == 8 and failures == {}, failures
