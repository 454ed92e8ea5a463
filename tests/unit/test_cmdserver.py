"""tests/cmdserver.py runs the tests' `wsuper` commands as children of a server that
imported the heavy modules once: each must end as it would in a new interpreter."""
import os
import re
import signal
import subprocess

import pytest

from tests import cmdserver
from tests.conftest import EXAMPLES, ROOT, Running, run_wsuper


@pytest.fixture
def both_ways(monkeypatch):
    """Run `fn` through the server, then in new interpreters: both results."""
    def run(fn):
        monkeypatch.delenv("WSUPER_TEST_FRESH", raising=False)
        served = fn()
        monkeypatch.setenv("WSUPER_TEST_FRESH", "1")
        fresh = fn()
        monkeypatch.delenv("WSUPER_TEST_FRESH")
        return served, fresh
    return run


def _same(a, b):
    def seen(r):       # the order compartments come ready in is their own
        return [r.returncode] + [sorted(re.sub(r"pid=\d+", "pid=N", t).splitlines(True))
                                 for t in (r.stdout, r.raw_stderr)]
    assert seen(a) == seen(b)


def test_a_command_ends_with_the_status_and_output_of_a_new_interpreter(tmp_path, both_ways):
    (tmp_path / "m.wat").write_text('(module (memory (export "memory") 1) (func (export "_start")))')
    (tmp_path / "good.toml").write_text('[compartments.m]\nmodule = "m.wat"\n')
    (tmp_path / "bad.toml").write_text('[compartments.m]\nmodule = 3\n')
    for args, kw in [(("check", "good.toml"), {"cwd": tmp_path}),
                     (("check", "bad.toml"), {"cwd": tmp_path}),
                     (("check", str(tmp_path / "none.toml")), {}),
                     (("up", os.path.join(EXAMPLES, "hello.toml")), {"merged": True}),
                     (("--version",), {}), (("frobnicate",), {})]:
        served, fresh = both_ways(lambda: run_wsuper(*args, **kw))
        _same(served, fresh)
    assert served.returncode == 2 and "frobnicate" in served.stderr


def _serving_system(tmp_path) -> str:
    """A system that serves until it is stopped."""
    (tmp_path / "system.toml").write_text(
        f'[system]\nschemas = ["{EXAMPLES}/calc.capnp"]\nsocket = "{tmp_path}/ext.sock"\n'
        f'[compartments.calc]\nmodule = "{EXAMPLES}/calc.wat"\nexports = "Calc"\n'
        f'external = true\n')
    return str(tmp_path / "system.toml")


def test_a_system_started_through_the_server_stops_and_is_reaped_as_a_child(tmp_path,
                                                                           both_ways):
    def run():
        r = Running(["up", _serving_system(tmp_path)])
        r.wait_for("ready calc")
        pid = r.proc.pid
        assert r.proc.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            r.proc.wait(0.2)
        r.proc.send_signal(signal.SIGTERM)
        code = r.finish()
        assert not os.path.exists(f"/proc/{pid}"), "not reaped once its status was read"
        return code, [line for line in r.lines if "pid=" not in line]
    served, fresh = both_ways(run)
    assert served == fresh


def test_a_command_past_its_timeout_is_killed_and_reaped(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_wsuper("up", _serving_system(tmp_path), timeout=1)
    children = open(f"/proc/{cmdserver._server.proc.pid}/task/"
                    f"{cmdserver._server.proc.pid}/children").read().split()
    assert children == []


def test_what_an_interpreter_reads_as_it_starts_is_read_by_a_new_one():
    """PYTHONPATH, PYTHON* and the locale decide sys.path, flags and encodings as an
    interpreter starts: a command given others than the server had runs fresh."""
    env = {**os.environ, "PYTHONPATH": "/nowhere"}
    assert cmdserver._serving(ROOT, os.environ) is not None
    assert cmdserver._serving(ROOT, env) is None
    r = run_wsuper("check", "/nonexistent.toml", env=env)
    assert r.returncode == 2


def test_a_suite_started_with_sigint_and_sighup_ignored_starts_systems_that_take_them():
    """`pytest ... &` from a script (no job control) starts with SIGINT ignored, and
    under nohup SIGHUP: the systems the tests started inherited it and kept it
    (as `up` keeps a signal ignored when it began), and 18 tests that stop one
    with SIGINT failed.  A test process (tests.conftest imported) started so gives
    its children both at their defaults."""
    import signal
    import sys

    def ignored():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    child = ("import signal; print(signal.getsignal(signal.SIGINT) is "
             "signal.default_int_handler, signal.getsignal(signal.SIGHUP) == signal.SIG_DFL)")
    code = ("import subprocess, sys; import tests.conftest; print(subprocess.run("
            f"[sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout, "
            "end='')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, preexec_fn=ignored, timeout=120)
    assert r.stdout == "True True\n", (r.stdout, r.stderr[-2000:])
