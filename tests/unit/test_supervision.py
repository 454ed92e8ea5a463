"""Restart decisions, without processes."""
import pytest

from supervisor.supervision import RestartPolicy, Supervision


def test_transient_restarts_only_abnormal_stops_with_growing_delays_then_gives_up():
    s = Supervision(RestartPolicy("transient", max_restarts=3, restart_window=10,
                                  restart_delay=0.5))
    assert s.decide(0, abnormal=False).action == "stop"
    decisions = [s.decide(t, abnormal=True) for t in (1, 2, 3)]
    assert [(d.action, d.delay, d.attempt) for d in decisions] == [
        ("restart", 0.5, 1), ("restart", 1.0, 2), ("restart", 2.0, 3)]
    failed = s.decide(4, abnormal=True)
    assert failed.action == "fail" and "3 restarts within 10 s" in failed.reason


def test_restarts_older_than_the_window_are_forgotten():
    s = Supervision(RestartPolicy("permanent", max_restarts=1, restart_window=5))
    assert s.decide(0, abnormal=False).action == "restart"     # permanent: even a clean stop
    assert s.decide(3, abnormal=True).action == "fail"
    s2 = Supervision(RestartPolicy("permanent", max_restarts=1, restart_window=5))
    s2.decide(0, abnormal=True)
    assert s2.decide(6, abnormal=True).action == "restart"


def test_never_means_never():
    s = Supervision(RestartPolicy("never"))
    assert s.decide(0, abnormal=True).action == "stop"


def test_denial_lines_are_throttled_per_caller_and_the_rest_counted():
    from supervisor.supervision import Throttle
    t = Throttle(per_second=2)
    assert [t.admit("bad", 0.1 * i) for i in range(5)] == \
        [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert t.admit("good", 0.3) == (True, 0)          # another caller is not held back
    assert t.admit("bad", 1.2) == (True, 3)           # a new window: three were hidden
    assert t.admit("bad", 1.3) == (True, 0)
    assert [t.admit("bad", 1.4) for _ in range(4)] == [(False, 0)] * 4
    assert t.hidden("bad") == 4 and t.hidden("bad") == 0   # said once, at its end
    assert t.hidden("nobody") == 0


# ------------------------------------------------------------------ the system's lifecycle

from supervisor.supervision import Fail, Finish, Lifecycle, Restart, Run, Say, Stop  # noqa: E402


def _life(**policies):
    """A lifecycle of compartments named by keyword, each with its RestartPolicy."""
    return Lifecycle({n: p for n, p in policies.items()}, {"db": ["app"]})


def _kinds(actions):
    return [type(a).__name__ for a in actions]


def test_programs_run_once_every_compartment_is_ready_and_the_system_ends_with_them():
    life = _life(db=RestartPolicy(), app=RestartPolicy())
    assert life.started("db", program=False) == []
    assert life.started("app", program=True) == [Run("app")]
    assert life.program_ended("app", 0, None, now=1) == [Say("finished app exit=0"), Finish(0)]


def test_a_system_without_programs_serves_until_stopped():
    life = _life(db=RestartPolicy())
    assert life.started("db", program=False) == [
        Say("all compartments ready; serving until Ctrl-C")]
    assert life.signal(15, "SIGTERM") == [Say("SIGTERM, stopping"), Finish(143)]
    assert life.signal(2, "SIGINT") == []                  # already stopping
    assert life.program_ended("db", 0, None, now=1) == []


def test_a_compartment_that_cannot_start_is_restarted_then_left_and_the_rest_run():
    life = _life(db=RestartPolicy(max_restarts=1, restart_delay=0.1), app=RestartPolicy())
    assert life.started("app", program=True) == []          # waits for db
    actions = life.start_failed("db", "its start function trapped", now=0)
    assert actions[0] == Say("compartment db failed to start: its start function trapped")
    # its first start failed: app's program runs without waiting for its restarts
    assert _kinds(actions) == ["Say", "Say", "Restart", "Run"] and actions[-1] == Run("app")
    actions = life.start_failed("db", "its start function trapped", now=1)
    # failed for good: db is settled
    assert _kinds(actions) == ["Say", "Say", "Fail"]
    assert life.program_ended("app", 0, None, now=2)[-1] == Finish(1)   # db failed: exit 1


def test_a_compartment_restarted_for_ever_before_it_starts_holds_no_program_back():
    """An outside review: a start that fails at start_time (30 s), restarted within
    max_restarts = 3 in restart_window = 60 s, never fails for good, and programs
    waited for it to be ready or settled: none ever ran."""
    life = _life(db=RestartPolicy(), app=RestartPolicy())           # the defaults
    assert life.started("app", program=True) == []
    actions = life.start_failed("db", "it did not start within 30 s", now=30)
    assert actions[-1] == Run("app")
    for now in (60.1, 90.3, 120.5, 150.7):          # it never fails for good
        assert _kinds(life.start_failed("db", "it did not start", now=now)) == \
            ["Say", "Say", "Restart"]
    # app's program ended: the system waits for db, which may have one too
    assert life.program_ended("app", 0, None, now=160) == [Say("finished app exit=0")]
    assert life.started("db", program=True) == [Run("db")]
    assert life.program_ended("db", 0, None, now=170)[-1] == Finish(0)
    # one that turns out to serve only: the system ends once it is ready
    life = _life(db=RestartPolicy("permanent"), app=RestartPolicy())
    life.started("app", program=True)
    life.start_failed("db", "no", now=0)
    assert life.program_ended("app", 0, None, now=1) == [Say("finished app exit=0")]
    assert life.started("db", program=False) == [Finish(0)]


def test_a_system_serving_while_one_restarts_after_a_failed_start_says_so():
    life = _life(db=RestartPolicy(), app=RestartPolicy())
    life.started("app", program=False)
    assert life.start_failed("db", "no", now=0)[-1] == Say(
        "all compartments ready but db (restarting after a failed start); serving "
        "until Ctrl-C")



def test_a_stop_while_one_never_started_and_restarts_exits_1_naming_it():
    """An outside review: `wsuper stop` (or a log disk that failed) while a
    compartment that has never been ready restarts after failed starts ended
    `wsuper up` with exit code 0, as if the system had worked; design.md says a
    compartment that never started is a configuration error (exit 1), and one
    left stopped or failed for good makes it 1.  A stop during a first start that
    has not failed, or while one that was ready restarts, is 0 as before; a
    signal's code is the signal's."""
    life = _life(db=RestartPolicy("permanent"), app=RestartPolicy())
    life.started("app", program=False)
    life.start_failed("db", "it did not start within 30 s", now=0)
    assert life.stop(0) == [Say("db never started (restarting after failed starts)",
                                "db"), Finish(1)]
    # db is still in its first start: nothing failed
    life = _life(db=RestartPolicy("permanent"), app=RestartPolicy())
    life.started("app", program=False)
    assert life.stop(0) == [Finish(0)]
    # db was ready once and is restarting: it worked
    life = _life(db=RestartPolicy("permanent"), app=RestartPolicy())
    life.started("app", program=False)
    life.start_failed("db", "no", now=0)
    life.started("db", program=False)
    life.engine_stopped("db", life.generation["db"], "engine exited", now=1)
    assert life.state["db"] == "restarting" and life.stop(0) == [Finish(0)]
    life = _life(db=RestartPolicy("permanent"), app=RestartPolicy())
    life.started("app", program=False)
    life.start_failed("db", "no", now=0)
    assert life.signal(15, "SIGTERM")[-1] == Finish(143)

def test_no_compartment_ready_yet_is_not_no_compartment_that_could_start():
    life = _life(db=RestartPolicy(), app=RestartPolicy())
    assert _kinds(life.start_failed("db", "no", now=0)) == ["Say", "Say", "Restart"]
    assert _kinds(life.start_failed("app", "no", now=0)) == ["Say", "Say", "Restart"]
    assert not life.stopping
    assert life.started("app", program=True) == [Run("app")]


def test_when_no_compartment_can_start_the_system_stops():
    life = _life(db=RestartPolicy("never"), app=RestartPolicy("never"))
    life.start_failed("db", "no", now=0)
    actions = life.start_failed("app", "no", now=0)
    assert actions[-2:] == [Say("no compartment could start"), Finish(1)]


def test_a_failed_restart_is_an_abnormal_stop_that_the_policy_handles():
    life = _life(db=RestartPolicy(restart_delay=0.1), app=RestartPolicy())
    life.started("db", False)
    life.started("app", True)
    actions = life.start_failed("db", "engine died", now=5)
    assert _kinds(actions) == ["Say", "Say", "Restart"] and actions[2].delay == 0.1


def test_exit_codes_traps_and_dead_engines_follow_the_restart_mode():
    life = _life(app=RestartPolicy("transient", max_restarts=1, restart_delay=0.5))
    life.started("app", True)
    # a non-zero exit is abnormal: transient restarts it, and its program runs again
    actions = life.program_ended("app", 3, None, now=1)
    assert actions[0] == Say("finished app exit=3") and isinstance(actions[2], Restart)
    assert life.started("app", True) == [Run("app")]
    # a trap, after the one restart allowed: failed for good, exit code 1
    actions = life.program_ended("app", None, "trapped: unreachable", now=2)
    assert _kinds(actions) == ["Say", "Say", "Fail", "Finish"]
    assert "failed for good" in actions[1].text and actions[-1] == Finish(1)


def test_an_engine_that_dies_restarts_and_stale_exits_are_ignored():
    life = _life(db=RestartPolicy("permanent", restart_delay=0.1), app=RestartPolicy())
    life.started("db", False)
    life.started("app", True)
    gen = life.generation["db"]
    actions = life.engine_stopped("db", gen, "engine killed by SIGKILL", now=1)
    assert _kinds(actions) == ["Say", "Restart"]
    # the old incarnation's exit, reported late, changes nothing
    assert life.engine_stopped("db", gen, "engine exited", now=1.1) == []
    life.started("db", False)
    assert life.engine_stopped("db", gen + 1, "engine exited", now=2)[1].name == "db"


def test_never_leaves_it_stopped_and_the_exit_code_says_so():
    life = _life(db=RestartPolicy("never"), app=RestartPolicy("never"))
    life.started("db", False)
    life.started("app", True)
    actions = life.engine_stopped("db", 0, "engine killed by SIGKILL", now=1)
    assert actions == [Say("compartment db stopped: engine killed by SIGKILL "
                           "(restart = 'never')"),
                       Stop("db", "stopped: engine killed by SIGKILL (restart = 'never')")]
    # a server (no program) that died counts as one whose program failed: it was 0,
    # while the same death past max_restarts = 0 made it 1 (an outside review)
    assert life.program_ended("app", 0, None, now=2)[-1] == Finish(1)
    never = _life(app=RestartPolicy("never"))
    never.started("app", True)
    assert never.program_ended("app", 2, None, now=1)[-1] == Finish(1)


def test_a_critical_compartment_that_fails_for_good_stops_the_system():
    life = _life(db=RestartPolicy(max_restarts=0, critical=True), app=RestartPolicy())
    life.started("db", False)
    life.started("app", True)
    actions = life.engine_stopped("db", 0, "engine exited with code 1", now=1)
    assert actions[0].text == ("compartment db failed for good: 0 restarts within 60 s "
                               "(max_restarts = 0) (last: engine exited with code 1); calls "
                               "from app to it now fail")
    assert actions[1] == Fail("db", "0 restarts within 60 s (max_restarts = 0); "
                                    "last: engine exited with code 1")
    assert actions[2:] == [Say("db is critical: stopping the system"), Finish(1)]
    assert life.started("app", True) == []                 # stopping: nothing more runs


def test_a_critical_compartment_left_stopped_after_an_abnormal_stop_stops_the_system():
    """An outside review: `critical` with restart = "never" (or a failed start or a trap
    of a transient one whose policy leaves it stopped) let the system go on without
    it, while max_restarts = 0, which restarts it no more either, stopped the system."""
    life = _life(db=RestartPolicy("never", critical=True), app=RestartPolicy())
    life.started("db", False)
    life.started("app", True)
    actions = life.engine_stopped("db", 0, "engine killed by SIGKILL", now=1)
    assert actions == [Say("compartment db stopped: engine killed by SIGKILL "
                           "(restart = 'never')"),
                       Stop("db", "stopped: engine killed by SIGKILL (restart = 'never')"),
                       Say("db is critical: stopping the system"), Finish(1)]
    assert life.state["db"] == "stopped" and life.exit_code == 1
    # one that never started, too
    life = _life(db=RestartPolicy("never", critical=True), app=RestartPolicy())
    life.started("app", True)
    assert life.start_failed("db", "it did not start within 1 s", now=1)[-1] == Finish(1)
    # a clean end of its program is no failure: the system goes on
    life = _life(db=RestartPolicy("transient", critical=True), app=RestartPolicy())
    life.started("db", True)
    life.started("app", True)
    assert Finish(0) not in life.program_ended("db", 0, None, now=1) and not life.stopping


def test_programs_stopped_by_the_supervisor_are_reported_stopped():
    life = _life(app=RestartPolicy())
    life.started("app", True)
    life.signal(2, "SIGINT")
    assert life.program_ended("app", None, "disconnected", now=1) == [Say("stopped app")]


def test_an_exported_system_keeps_serving_after_its_programs_end():
    life = Lifecycle({"api": RestartPolicy(), "job": RestartPolicy()}, external=True)
    life.started("api", False)
    life.started("job", True)
    assert life.program_ended("job", 0, None, now=1) == [Say("finished job exit=0")]


def test_one_incarnation_stops_once_however_often_it_is_said():
    """The supervisor kills a program past its run_time and says so; its engine's
    lost answer to run() then says the program failed again, and its engine's
    exit a third time.  One stop, one restart; after failing for good, nothing."""
    life = _life(spin=RestartPolicy("permanent", max_restarts=2, restart_delay=0.1),
                 app=RestartPolicy())
    life.started("spin", True)
    life.started("app", False)
    gen = life.generation["spin"]
    first = life.program_ended("spin", None, "its program ran longer than 1 s", now=1)
    assert _kinds(first) == ["Say", "Say", "Restart"] and life.restarts["spin"] == 1
    assert life.program_ended("spin", None, "its program failed", now=1) == []
    assert life.engine_stopped("spin", gen, "engine killed by SIGKILL", now=1) == []
    assert life.started("spin", True) == [Run("spin")]
    assert _kinds(life.program_ended("spin", None, "too long", now=2))[-1] == "Restart"
    assert life.started("spin", True) == [Run("spin")]
    last = life.program_ended("spin", None, "too long", now=3)
    assert _kinds(last)[:3] == ["Say", "Say", "Fail"] and life.state["spin"] == "failed"
    assert life.program_ended("spin", None, "its program failed", now=3) == []
    assert life.engine_stopped("spin", life.generation["spin"], "engine exited", now=3) == []
    assert life.start_failed("spin", "late news", now=3) == []


def test_a_program_whose_engine_stopped_before_the_others_were_ready_is_not_run():
    """An outside review: a compartment ready early whose engine then died while
    another was still starting was Run with the others all the same.  Marked
    running, a restarting one skipped its restart (or its missing engine counted
    as one more failure: one crash used up max_restarts = 1), and one that had
    failed for good, or was left stopped, was 'running' again."""
    # restarting: not run now, but once its new incarnation is ready; one restart
    life = _life(app=RestartPolicy(max_restarts=1, restart_delay=5), slow=RestartPolicy())
    assert life.started("app", program=True) == []
    assert _kinds(life.engine_stopped("app", 0, "engine killed by SIGKILL", now=1)) == \
        ["Say", "Restart"]
    assert life.started("slow", program=False) == []          # app is restarting
    assert life.state["app"] == "restarting" and not life.running
    assert life.started("app", program=True) == [Run("app")]
    assert life.restarts["app"] == 1 and life.state["app"] == "running"
    assert life.program_ended("app", 0, None, now=2) == [Say("finished app exit=0"),
                                                         Finish(0)]
    # failed for good, or left stopped: never run again; the system ends with exit 1
    for policy in (RestartPolicy(max_restarts=0), RestartPolicy("never")):
        life = _life(app=policy, job=RestartPolicy(), slow=RestartPolicy())
        life.started("app", program=True)
        life.started("job", program=True)
        life.engine_stopped("app", 0, "engine killed by SIGKILL", now=1)
        gone = life.state["app"]
        assert life.started("slow", program=False) == [Run("job")]
        assert life.state["app"] == gone and life.running == {"job"}
        assert life.program_ended("job", 0, None, now=2)[-1] == Finish(1)
    # no program left to run at all: the system ends there
    life = _life(app=RestartPolicy(max_restarts=0), slow=RestartPolicy())
    life.started("app", program=True)
    life.engine_stopped("app", 0, "engine killed by SIGKILL", now=1)
    assert life.started("slow", program=False) == [Finish(1)]


def test_the_system_does_not_end_while_a_program_is_restarting():
    """A program restarting when the others became ready is not running yet: the
    system must not end because another program finishes before it is back."""
    life = _life(app=RestartPolicy(restart_delay=5), job=RestartPolicy(),
                 slow=RestartPolicy())
    life.started("app", program=True)
    life.started("job", program=True)
    life.engine_stopped("app", 0, "engine killed by SIGKILL", now=1)
    assert life.started("slow", program=False) == [Run("job")]
    assert life.program_ended("job", 0, None, now=2) == [Say("finished job exit=0")]
    assert not life.stopping
    assert life.started("app", program=True) == [Run("app")]
    assert life.program_ended("app", 0, None, now=7) == [Say("finished app exit=0"),
                                                         Finish(0)]


def test_a_restart_delay_above_the_doubling_cap_is_waited_as_written():
    """An outside review: restart_delay may be up to 60 s, but every restart waited
    at most MAX_DELAY (10 s): restart_delay = 60 restarted after 10."""
    from supervisor.supervision import MAX_DELAY
    s = Supervision(RestartPolicy(max_restarts=3, restart_delay=60))
    assert [s.decide(t, abnormal=True).delay for t in (0, 1, 2)] == [60, 60, 60]
    s = Supervision(RestartPolicy(max_restarts=5, restart_delay=3))
    assert [s.decide(t, abnormal=True).delay for t in range(5)] == \
        [3, 6, MAX_DELAY, MAX_DELAY, MAX_DELAY]


@pytest.mark.parametrize("policy", [RestartPolicy("never"),
                                    RestartPolicy("transient", max_restarts=1)])
def test_a_program_that_never_starts_beside_servers_ends_the_system(policy):
    """An outside review: the system's one program (its module exports _start, as
    `up` checked) fails every start, and the rest only serve: the lifecycle knew of
    a program only once its engine said so at start, so it took the system for one
    without programs, said 'all compartments ready; serving until Ctrl-C' (app was
    not) and `wsuper up` served for ever instead of ending, exit 1."""
    life = Lifecycle({"db": RestartPolicy(), "app": policy}, {"db": ["app"]},
                     programs={"app"})
    assert life.started("db", program=False) == []
    actions = life.start_failed("app", "its start function trapped", now=0)
    if policy.mode == "transient":
        assert _kinds(actions) == ["Say", "Say", "Restart"]
        actions = life.start_failed("app", "its start function trapped", now=1)
    assert actions[-1] == Finish(1)
    assert not any(isinstance(a, Say) and "serving until" in a.text for a in actions)
    # one ready later still runs its program once all are ready (or settled)
    life = Lifecycle({"db": RestartPolicy(), "app": RestartPolicy()}, programs={"app"})
    assert life.started("db", program=False) == []
    assert life.started("app", program=True) == [Run("app")]
    # the engine's own word wins: a module that has no _start at this start serves
    life = Lifecycle({"db": RestartPolicy(), "app": RestartPolicy()}, programs={"app"})
    life.started("db", program=False)
    assert life.started("app", program=False) == [
        Say("all compartments ready; serving until Ctrl-C")]


def test_a_server_that_never_started_is_not_said_to_be_ready():
    """'all compartments ready' was said of a system one of whose compartments had
    failed its start and was left stopped."""
    life = Lifecycle({"db": RestartPolicy("never"), "app": RestartPolicy()}, external=True)
    life.started("app", program=False)
    actions = life.start_failed("db", "no", now=0)
    assert actions[-1] == Say("all compartments ready but db (left stopped after a failed "
                              "start); serving until Ctrl-C")


def test_what_a_failed_start_hands_its_callers_says_why_it_failed():
    """An outside review: calls waiting for a start that failed (start_time passed, a
    grant that could not be opened) were failed 'compartment calc is gone: it
    failed to start', or with restart = "never" 'compartment calc stopped: it
    failed to start (restart = 'never')': why was said to the operator only."""
    why = "it did not start within 1 s (limit start_time)"
    life = _life(db=RestartPolicy(), app=RestartPolicy())
    actions = life.start_failed("db", why, now=0)
    restart = [a for a in actions if isinstance(a, Restart)]
    assert restart and restart[0].reason == f"it failed to start: {why}"
    # the operator's lines stay as they were: the first names why
    assert actions[0] == Say(f"compartment db failed to start: {why}")
    assert actions[1].text.startswith("restarting db in 0.1 s (it failed to start; restart 1 ")
    life = _life(db=RestartPolicy("never"), app=RestartPolicy())
    actions = life.start_failed("db", why, now=0)
    assert Stop("db", f"stopped: it failed to start: {why} (restart = 'never')") in actions
    assert Say("compartment db stopped: it failed to start (restart = 'never')") in actions


def test_what_a_failed_program_hands_its_callers_says_why_it_failed():
    """As a failed start: a program that trapped (or ran past run_time) left its
    callers 'compartment app stopped: its program failed (restart = 'never')', or
    'is gone: its program failed' for the calls its engine had, and no more."""
    why = "compartment app trapped: wasm `unreachable` instruction executed"
    life = _life(db=RestartPolicy(), app=RestartPolicy("never"))
    life.started("db", program=False)
    life.started("app", program=True)
    actions = life.program_ended("app", None, why, now=1)
    # the operator is told the name once, the callers it as the engine said it
    assert Say("compartment app failed: trapped: wasm `unreachable` instruction "
               "executed") in actions
    for error, said in [("compartment app failed: _start: no such export",
                         "compartment app failed: _start: no such export"),
                        ("its program ran longer than 1 s (limit run_time)",
                         "compartment app failed: its program ran longer than 1 s "
                         "(limit run_time)"),
                        ("compartment application trapped: x",   # not its name
                         "compartment app failed: compartment application trapped: x")]:
        life = _life(db=RestartPolicy(), app=RestartPolicy("never"))
        life.started("db", program=False)
        life.started("app", program=True)
        assert Say(said) in life.program_ended("app", None, error, now=1)
    assert Stop("app", f"stopped: its program failed: {why} (restart = 'never')") in actions
    assert Say("compartment app stopped: its program failed (restart = 'never')") in actions
    life = _life(db=RestartPolicy(), app=RestartPolicy())
    life.started("db", program=False)
    life.started("app", program=True)
    actions = life.program_ended("app", None, why, now=1)
    assert [a.reason for a in actions if isinstance(a, Restart)] == [
        f"its program failed: {why}"]


def test_a_system_serving_while_one_never_started_and_is_left_so_says_so():
    """A review of the operator's commands: a compartment whose first start failed
    and that is left stopped (restart = "never") or failed for good (max_restarts
    = 0), beside others that serve, was followed by "all compartments ready;
    serving until Ctrl-C": the operator was told every compartment was ready (and
    `wsuper status` then showed it stopped)."""
    life = _life(db=RestartPolicy("never"), app=RestartPolicy())
    life.started("app", program=False)
    assert life.start_failed("db", "no", now=0)[-1] == Say(
        "all compartments ready but db (left stopped after a failed start); serving "
        "until Ctrl-C")
    life = _life(db=RestartPolicy(max_restarts=0), app=RestartPolicy(),
                 cache=RestartPolicy("never"), web=RestartPolicy())
    life.start_failed("db", "no", now=0)
    life.start_failed("cache", "no", now=0)
    life.start_failed("web", "no", now=0)
    assert life.started("app", program=False)[-1] == Say(
        "all compartments ready but web (restarting after a failed start), cache (left "
        "stopped after a failed start), db (failed for good after a failed start); "
        "serving until Ctrl-C")


def test_a_compartment_that_crashes_at_once_is_restarted_ever_slower_not_for_ever_at_once():
    """An outside review: restart_delay = 0 with a restart_window shorter than a
    restart takes: each crash found the window empty, so every restart waited 0 s
    and max_restarts never tripped (~30 restarts a second for ever).  The back-off
    now counts restarts in a row, not in the window."""
    from supervisor.supervision import MAX_DELAY
    s = Supervision(RestartPolicy("permanent", max_restarts=3, restart_window=0.1,
                                  restart_delay=0))
    now, delays = 0.0, []
    for _ in range(14):                 # each incarnation crashes 30 ms into its life
        d = s.decide(now, abnormal=True)
        assert d.action == "restart"    # the window is too short to trip: as written
        delays.append(d.delay)
        now += d.delay + 0.03
    assert delays[0] == 0                                   # the first is at once
    assert delays[1:4] == [0.02, 0.04, 0.08]
    assert all(b >= a for a, b in zip(delays, delays[1:]))
    assert delays[-1] == MAX_DELAY                          # then one each MAX_DELAY
    for _ in range(3000):           # hours of it: the doubling never overflows a float
        d = s.decide(now, abnormal=True)
        now += d.delay + 0.03
    assert d.action == "restart" and d.delay == MAX_DELAY


def test_an_incarnation_that_ran_steadily_ends_the_row_of_restarts():
    from supervisor.supervision import STEADY
    s = Supervision(RestartPolicy("permanent", max_restarts=100, restart_window=1,
                                  restart_delay=0.5))
    assert [s.decide(t, abnormal=True).delay for t in (0, 1, 3)] == [0.5, 1.0, 2.0]
    # the incarnation begun at 5 (3 + 2) ran STEADY seconds: the next waits restart_delay
    assert s.decide(5 + STEADY, abnormal=True).delay == 0.5
    assert s.decide(5 + STEADY + 1, abnormal=True).delay == 1.0


def test_a_start_that_fails_slowly_does_not_end_the_row_of_restarts():
    """An outside review: a row of restarts ended when an incarnation ran STEADY
    seconds from its restart, whether it ever became ready or not.  A start that
    fails slowly -- a start function that spins until start_time (30 s by default)
    kills it, a grant whose opening takes its deadline -- took longer than STEADY
    each time, so every restart was the first of a row and waited restart_delay
    (0): under a restart_window shorter than the start (which max_restarts then
    never trips), the compartment was restarted at once for ever, its start
    function spinning a CPU all the while.  Only an incarnation that became ready
    and then ran steadily ends a row."""
    from supervisor.supervision import MAX_DELAY, STEADY
    life = _life(db=RestartPolicy("permanent", max_restarts=3, restart_window=5,
                                  restart_delay=0), app=RestartPolicy())
    life.started("app", program=False)
    now, delays = 0.0, []
    for _ in range(12):
        now += 30                                    # start_time passes: killed
        (restart,) = [a for a in life.start_failed("db", "it did not start within 30 s",
                                                   now) if isinstance(a, Restart)]
        delays.append(restart.delay)
        now += restart.delay
    assert delays[:4] == [0, 0.02, 0.04, 0.08], delays
    assert delays[-1] == MAX_DELAY, delays
    # once an incarnation is ready and runs steadily, the next row begins anew
    life.started("db", program=False)
    actions = life.engine_stopped("db", life.generation["db"], "engine killed by SIGKILL",
                                  now + STEADY)
    assert [a.delay for a in actions if isinstance(a, Restart)] == [0]


def test_callers_of_a_compartment_that_failed_for_good_are_told_its_last_cause():
    """An outside review: calls to a compartment past max_restarts failed with
    'failed: 2 restarts within 60 s (max_restarts = 2)', never why it kept stopping
    (said to the operator only)."""
    why = "compartment db trapped: wasm `unreachable` instruction executed"
    life = _life(db=RestartPolicy(max_restarts=0), app=RestartPolicy())
    life.started("db", program=True)
    life.started("app", program=False)
    actions = life.program_ended("db", None, why, now=1)
    fails = [a for a in actions if isinstance(a, Fail)]
    assert len(fails) == 1
    assert fails[0].reason == ("0 restarts within 60 s (max_restarts = 0); "
                               f"last: its program failed: {why}")


def test_callers_of_a_start_that_failed_opening_a_grant_are_not_told_its_host_path():
    """The operator is told which path could not be opened; the compartments calling
    it were told the same ('it failed to start: cannot open /home/alice/db for grant
    data: ...'): the host layout behind another compartment's grant."""
    life = _life(db=RestartPolicy(), app=RestartPolicy())
    actions = life.start_failed("db", "cannot open /home/alice/db for grant data: No such "
                                "file or directory", now=0,
                                told="cannot open its grant data (ENOENT)")
    assert actions[0] == Say("compartment db failed to start: cannot open /home/alice/db "
                             "for grant data: No such file or directory")
    restart = [a for a in actions if isinstance(a, Restart)]
    assert restart[0].reason == "it failed to start: cannot open its grant data (ENOENT)"


def test_what_callers_are_told_of_a_stop_names_no_host_path_of_the_module_or_a_grant():
    from types import SimpleNamespace as G

    from supervisor.runtime import told_callers
    grants = [G(kind="host", name="data", path="/home/alice/data"),
              G(kind="host", name="inner", path="/home/alice/data/inner"),
              G(kind="host", name="log", path=None),
              G(kind="compartment", name="calc", path=None)]
    text = ("engine exited with code 3: error: cannot instantiate /home/alice/p/calc.wasm: "
            "cannot open /home/alice/data/inner and /home/alice/data/x")
    told = told_callers("/home/alice/p/calc.wasm", grants, text)
    assert told == ("engine exited with code 3: error: cannot instantiate calc.wasm: "
                    "cannot open (grant inner) and (grant data)/x")
    assert told_callers("/", [], "a / b") == "a / b"        # no path too short to mean one
