"""docs/tutorial.md, run as written: its files, its commands, its output."""
import os
import re
import subprocess
import sys

from supervisor.output import strip_time
from tests.conftest import ROOT

TUTORIAL = os.path.join(ROOT, "docs", "tutorial.md")


def _wsuper(args, cwd, merged=False):
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args], cwd=cwd,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                          text=True, timeout=300)


def test_the_tutorial_works_as_written(tmp_path):
    text = open(TUTORIAL, encoding="utf-8").read()
    files = re.findall(r"^`([\w.]+)`:\n\n```\w*\n(.*?)```", text, re.M | re.S)
    assert [name for name, _ in files] == ["greeter.capnp", "greeter.c", "app.c", "system.toml"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    commands = re.findall(r"^    (wsuper .*)$", text, re.M)
    assert commands[:3] == [
        "wsuper build greeter.c --schema greeter.capnp -o build/greeter.wasm",
        "wsuper build app.c --schema greeter.capnp -o build/app.wasm",
        "wsuper up system.toml"]
    for cmd in commands[:2]:
        r = _wsuper(cmd.split()[1:], tmp_path)
        assert r.returncode == 0, r.stderr
    r = _wsuper(["up", "system.toml"], tmp_path, merged=True)
    assert r.returncode == 0, r.stdout
    expected = re.search(r"    wsuper up system.toml\n\n```\n(.*?)```", text, re.S).group(1)

    def normal(lines):
        return sorted(re.sub(r"pid=\d+", "pid=...", strip_time(l))
                      for l in lines.splitlines() if l)
    assert normal(r.stdout) == normal(expected)
    # the same greeter with a fresh instance per call (a C reactor: _initialize each time)
    system = (tmp_path / "system.toml").read_text()
    (tmp_path / "system.toml").write_text(system.replace(
        'exports = "Greeter"', 'exports = "Greeter"\ninstance = "per_call"'))
    r = _wsuper(["up", "system.toml"], tmp_path)
    assert "[app] Hello, Ada! (greeting #1)" in r.stdout
    assert "[app] Hello, Grace! (greeting #1)" in r.stdout, r.stdout
    (tmp_path / "system.toml").write_text(system)
    check = re.search(r"^    (wsuper check .*)$", text, re.M).group(1)
    r = _wsuper(check.split()[1:], tmp_path)
    assert r.returncode == 0 and "could reach greeter.greet: app\n" in r.stdout, r.stdout
    shown = re.search(r"```\n(could reach greeter.greet: .*?)\n```", text).group(1)
    assert f"{shown}\n" in r.stdout
