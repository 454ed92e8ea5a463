"""docs/tutorial.md, run as written: its files, its commands, its output."""
import json
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
    # the whole output, as shown for a directory ~/hello-wsuper of user `you`
    shown = re.search(r"^    wsuper check .*?```\n(.*?)```", text, re.M | re.S).group(1)
    place = re.search(r"here in `(/[^`]+)`", text).group(1)
    assert r.stdout.replace(os.path.realpath(tmp_path), place) == shown


def test_what_the_tutorial_says_to_try_happens(tmp_path):
    """Section 8's experiments, as written: an audit line per call, a compartment
    without stdout that runs the same, a read-only directory grant (its C lines and
    what each gets), and a greeter that loops, whose call fails on its CPU budget
    while the app and the greeter carry on."""
    text = open(TUTORIAL, encoding="utf-8").read()
    files = dict(re.findall(r"^`([\w.]+)`:\n\n```\w*\n(.*?)```", text, re.M | re.S))
    try_it = text[text.index("## 8."):]
    grant = re.search(r"add `(data = \{.*?\})`", try_it, re.S).group(1)
    grant = " ".join(grant.split())
    snippet = re.search(r"```c\n(.*?)```", try_it, re.S).group(1)
    opens = re.findall(r"^\s*(FILE \*(\w) = fopen\(.*?\);)\s*/\* (.*?) \*/", snippet, re.M)
    assert [v for _, v, _ in opens] == ["f", "g", "h"]
    (tmp_path / "greeter.capnp").write_text(files["greeter.capnp"])
    loops = 'if (in->name.len == 4 && !memcmp(in->name.ptr, "loop", 4)) for (;;) {}\n  '
    (tmp_path / "greeter.c").write_text("#include <string.h>\n" + files["greeter.c"].replace(
        "if (in->name.len == 0)", loops + "if (in->name.len == 0)"))
    lines = "\n".join(
        f'  errno = 0;\n  {line}\n  printf("{v}: %s %d\\n", {v} ? "opened" : "NULL", errno);'
        for line, v, _ in opens)
    (tmp_path / "app.c").write_text(f"""#include <errno.h>
#include <stdio.h>
#include "greeter.h"
int main(void) {{
  wsuper_arena a = {{0, 0}};
  wsuper_cap greeter = wsuper_lookup_cap("greeter");
  const char *names[] = {{"loop", "Ada"}};
  for (int i = 0; i < 2; i++) {{
    greeter_greet_results r;
    int rc = greeter_greet(&a, greeter, wsuper_str(names[i]), &r);
    printf("%s: %d %s\\n", names[i], rc, rc ? a.error : r.greeting.ptr);
  }}
{lines}
  printf("EROFS=%d\\n", EROFS);
  return 0;
}}
""")
    for name in ("greeter", "app"):
        r = _wsuper(["build", f"{name}.c", "--schema", "greeter.capnp", "-o",
                     f"build/{name}.wasm"], tmp_path)
        assert r.returncode == 0, r.stderr
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("notes\n")
    system = files["system.toml"].replace("[system]", '[system]\naudit = "audit.jsonl"')
    assert 'audit = "audit.jsonl"' in system
    (tmp_path / "system.toml").write_text(system.replace(
        'stdout = { host = "log" }', 'stdout = { host = "log" }\n' + grant))
    r = _wsuper(["up", "system.toml"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    said = dict(l[len("[app] "):].split(": ", 1) for l in r.stdout.splitlines()
                if l.startswith("[app] ") and ": " in l)
    # the loop: E_OVERLOADED (-4), its CPU budget named; the next call is served
    assert said["loop"].startswith("-4 ") and "fuel_per_call" in said["loop"], said
    assert said["Ada"] == "0 Hello, Ada!", said
    erofs = int(re.search(r"EROFS=(\d+)", r.stdout).group(1))
    assert said["f"] == "opened 0"                      # works: it is granted
    assert said["g"] == f"NULL {erofs}"                 # NULL, errno EROFS: read_only
    assert said["h"].startswith("NULL ")                # NULL: nothing granted there
    records = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
    calls = [c for c in records if "caller" in c]
    assert {"time", "caller", "capability", "method", "outcome", "duration_ms"} <= set(calls[0])
    assert [c["outcome"] for c in calls if c["method"] == "greet"] == ["failed", "returned"]
    # without stdout: the app runs the same, and prints nowhere
    (tmp_path / "system.toml").write_text(files["system.toml"].replace(
        'stdout = { host = "log" }\n', ""))
    r = _wsuper(["up", "system.toml"], tmp_path, merged=True)
    assert r.returncode == 0 and "finished app exit=0" in r.stdout, r.stdout
    assert "[app]" not in r.stdout, r.stdout


def test_a_mistyped_grant_name_in_the_app_is_named_as_such(tmp_path):
    """The tutorial's app with wsuper_lookup_cap("greetr"): each greet failed with
    "handle -7 is not in this compartment's c-list", and -7 is not a handle but
    lookup's E_NOTFOUND. The reason now says what -7 is and where to look."""
    text = open(TUTORIAL, encoding="utf-8").read()
    files = dict(re.findall(r"^`([\w.]+)`:\n\n```\w*\n(.*?)```", text, re.M | re.S))
    for name, body in files.items():
        (tmp_path / name).write_text(body.replace('wsuper_lookup_cap("greeter")',
                                                  'wsuper_lookup_cap("greetr")'))
    for name in ("greeter", "app"):
        r = _wsuper(["build", f"{name}.c", "--schema", "greeter.capnp", "-o",
                     f"build/{name}.wasm"], tmp_path)
        assert r.returncode == 0, r.stderr
    r = _wsuper(["up", "system.toml"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    failed = [l for l in r.stdout.splitlines() if l.startswith("[app] greet failed")]
    assert len(failed) == 3, r.stdout
    assert "handle -7 is not a handle: it is E_NOTFOUND, what lookup returns when " \
           "nothing is granted under the name it was given" in failed[0], failed[0]


def test_setup_without_root_or_sudo_says_what_to_run_as_root():
    """`./scripts/setup` run by an ordinary user on a machine without the toolchain
    and without sudo failed with only "sudo: command not found" (exit 127), and
    `wsuper build` said to run it.  It says the toolchain takes root, the command
    to run as root, sets up the rest, and exits 1."""
    import shutil
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        import pytest
        pytest.skip("needs root and setpriv(1) to play an ordinary user")
    import tempfile
    from pathlib import Path
    tmp_path = Path(tempfile.mkdtemp(prefix="wsuper-r178-"))     # nobody may reach it
    try:
        _setup_as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _setup_as_nobody(tmp_path):
    import shutil
    repo, bin_ = tmp_path / "repo", tmp_path / "bin"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "scripts", "setup"), repo / "scripts" / "setup")
    bin_.mkdir()
    for tool in ("mktemp", "date", "mv", "rm", "cat", "ls", "dirname", "id", "env", "bash",
                 "mkdir", "chmod"):
        os.symlink(shutil.which(tool), bin_ / tool)
    (bin_ / "apt-get").write_text("#!/bin/sh\necho apt-get ran >&2\nexit 3\n")
    (bin_ / "python3").write_text(       # makes a .venv whose python does nothing
        '#!/bin/sh\n[ "$2" = venv ] && mkdir -p "$3/bin" && '
        'printf "#!/bin/sh\\nexit 0\\n" > "$3/bin/python" && chmod 755 "$3/bin/python"\n')
    for stub in ("apt-get", "python3"):
        os.chmod(bin_ / stub, 0o755)
    for d in (tmp_path, repo, repo / "scripts"):
        os.chown(d, 65534, 65534)
    os.chmod(tmp_path, 0o755)
    r = subprocess.run([shutil.which("setpriv"), "--reuid", "65534", "--regid", "65534",
                        "--clear-groups", str(bin_ / "bash"), str(repo / "scripts" / "setup")],
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": str(bin_), "HOME": str(tmp_path)})
    if "Permission denied" in r.stderr and "setup:" not in r.stderr + r.stdout:
        import pytest
        pytest.skip(f"cannot run as nobody here: {r.stderr.strip()[-200:]}")
    assert "sudo" not in r.stderr.replace("no sudo", ""), r.stderr
    assert "apt-get ran" not in r.stderr
    assert "installing it takes root (there is no sudo here): as root, run" in r.stderr, r.stderr
    assert "  apt-get install --no-install-recommends clang lld wasi-libc " in r.stderr
    assert "setup: virtual environment (.venv) ... done" in r.stdout, r.stdout
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
