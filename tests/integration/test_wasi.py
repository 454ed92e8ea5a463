"""WASI programs (C, built with clang and wasi-libc) run on their grants, and nothing else."""
import json

from tests.conftest import audit_calls, run_wsuper


def _system(tmp_path, module, grants, extra=""):
    (tmp_path / "system.toml").write_text(f"""
[system]
audit = "{tmp_path}/audit.jsonl"
[compartments.app]
module = "{module}"
restart = "never"
{extra}
[compartments.app.grants]
{grants}
""")
    return str(tmp_path / "system.toml")


def _lines(r):
    return [l[6:] for l in r.stdout.splitlines() if l.startswith("[app] ")]


def _audit(tmp_path):
    return audit_calls(tmp_path / "audit.jsonl")


def test_a_posix_program_works_on_what_it_is_granted(tmp_path, wasi_guests):
    data, ro = tmp_path / "data", tmp_path / "ro"
    data.mkdir()
    ro.mkdir()
    (ro / "readme.txt").write_text("read me\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    (data / "link").symlink_to("../secret.txt")
    system = _system(tmp_path, wasi_guests["posix"], f"""
stdout = {{ host = "log" }}
stderr = {{ host = "log" }}
data = {{ host = "directory", path = "{data}" }}
ro = {{ host = "directory", path = "{ro}", read_only = true }}
env = {{ host = "environment", args = ["one", "two words"], vars = {{ GREETING = "hello" }} }}
clock = {{ host = "clock" }}
random = {{ host = "random" }}
""")
    r = run_wsuper("up", system, timeout=120)
    lines = _lines(r)
    assert [l for l in lines if not l.startswith("ok ")] == ["to stderr"], r.stdout + r.stderr
    assert len(lines) == 38
    assert "finished app exit=0" in r.stderr and r.returncode == 0
    # what it did is on disk, where it was granted, and nowhere else
    assert (data / "notes.txt").read_text() == "line one\nline two\nline three\n"
    assert (data / "w+.txt").read_text() == "a"
    assert sorted(p.name for p in data.iterdir()) == ["link", "notes.txt", "w+.txt"]
    assert (ro / "readme.txt").read_text() == "read me\n"
    # every WASI call that used authority is an audited capability call
    records = _audit(tmp_path)
    used = {(x["capability"].split(">")[0], x["method"]) for x in records}
    assert {("app.data", "open"), ("app.data", "create"), ("app.data", "mkdir"),
            ("app.env", "args"), ("app.clock", "wall"), ("app.random", "bytes"),
            ("app.stdout", "write")} <= used, used


def test_a_rust_program_uses_std_fs_env_and_args_on_its_grants(tmp_path, wasi_guests):
    data = tmp_path / "data"
    data.mkdir()
    system = _system(tmp_path, wasi_guests["rustfs"], f"""
stdout = {{ host = "log" }}
data = {{ host = "directory", path = "{data}" }}
env = {{ host = "environment", args = ["--flag", "x"], vars = {{ MODE = "fast" }} }}
clock = {{ host = "clock" }}
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == ['args ["--flag", "x"]', "MODE=fast",
                         'read back: "written by rust\\n"', 'dir: ["rust.txt"]',
                         "outside: true", "time ok: true"], r.stdout + r.stderr
    assert "finished app exit=4" in r.stderr
    assert (data / "rust.txt").read_text() == "written by rust\n"


def test_without_grants_a_program_gets_nothing(tmp_path, wasi_guests):
    (tmp_path / "mine.txt").write_text("mine\n")
    system = _system(tmp_path, wasi_guests["probe"], """
stdout = { host = "log" }
env = { host = "environment", args = ["read:/etc/passwd", "read:mine.txt", "write:/tmp/x",
                                       "time", "random", "exit:3"] }
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == ["read /etc/passwd -> ENOTCAPABLE", "read mine.txt -> ENOTCAPABLE",
                         "write /tmp/x -> ENOTCAPABLE", "time  -> ENOTCAPABLE",
                         "random  -> ENOTCAPABLE"], r.stdout + r.stderr
    # stderr was not granted: its line went nowhere; the exit code is the program's
    assert "leaving with" not in r.stdout
    assert "finished app exit=3" in r.stderr


def test_append_only_and_read_only_hold_for_wasi_programs(tmp_path, wasi_guests):
    journal, docs = tmp_path / "journal", tmp_path / "docs"
    journal.mkdir()
    docs.mkdir()
    (journal / "log.txt").write_text("first\n")
    (docs / "a.txt").write_text("doc\n")
    ops = ["append:/j/log.txt", "write:/j/log.txt", "overwrite:/j/log.txt",
           "truncate:/j/log.txt", "unlink:/j/log.txt", "append:/j/new.txt",
           "read:/docs/a.txt", "write:/docs/a.txt", "write:/docs/b.txt", "mkdir:/docs/d",
           "unlink:/docs/a.txt", "stat:/docs/a.txt"]
    system = _system(tmp_path, wasi_guests["probe"], f"""
stdout = {{ host = "log" }}
j = {{ host = "directory", path = "{journal}", append_only = true }}
docs = {{ host = "directory", path = "{docs}", read_only = true }}
env = {{ host = "environment", args = {json.dumps(ops)} }}
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == [
        "append /j/log.txt -> ok",
        "write /j/log.txt -> EPERM",          # "w" would truncate: refused
        "overwrite /j/log.txt -> EPERM",      # no write at an offset
        "truncate /j/log.txt -> EPERM",
        "unlink /j/log.txt -> EPERM",
        "append /j/new.txt -> ok",            # new files are append-only too
        "read /docs/a.txt -> ok", "  doc",
        "write /docs/a.txt -> EROFS", "write /docs/b.txt -> EROFS",
        "mkdir /docs/d -> EROFS", "unlink /docs/a.txt -> EROFS",
        "stat /docs/a.txt -> ok"], r.stdout + r.stderr
    assert (journal / "log.txt").read_text() == "first\nentry\n"
    assert (journal / "new.txt").read_text() == "entry\n"
    assert sorted(p.name for p in docs.iterdir()) == ["a.txt"]
    assert (docs / "a.txt").read_text() == "doc\n"


def test_allow_lists_and_quotas_hold_for_wasi_programs(tmp_path, wasi_guests):
    box = tmp_path / "box"
    box.mkdir()
    (box / "in.txt").write_text("input\n")
    ops = ["read:/box/in.txt", "stat:/box/in.txt", "mkdir:/box/d", "write:/box/out.txt",
           "bigwrite:/q/big.bin"]
    quota = tmp_path / "quota"
    quota.mkdir()
    system = _system(tmp_path, wasi_guests["probe"], f"""
stdout = {{ host = "log" }}
box = {{ host = "directory", path = "{box}", allow = ["open", "File.read", "File.stat"] }}
q = {{ host = "directory", path = "{quota}", max_bytes_written = 1000 }}
env = {{ host = "environment", args = {json.dumps(ops)} }}
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == ["read /box/in.txt -> ok", "  input",
                         "stat /box/in.txt -> ENOTCAPABLE", "mkdir /box/d -> ENOTCAPABLE",
                         "write /box/out.txt -> ENOTCAPABLE",
                         "bigwrite /q/big.bin -> EDQUOT"], r.stdout + r.stderr
    assert "denied: app -> app.box: Directory.mkdir is not allowed" in r.stderr
    denied = [(x["capability"], x["method"]) for x in _audit(tmp_path)
              if x["outcome"] == "denied"]
    assert ("app.box", "mkdir") in denied and ("app.box", "stat") in denied
    assert sorted(p.name for p in box.iterdir()) == ["in.txt"]
    assert (quota / "big.bin").stat().st_size <= 1000


def test_stdout_can_be_a_granted_file_and_mount_sets_the_preopen_name(tmp_path, wasi_guests):
    (tmp_path / "out.txt").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.txt").write_text("hi there\n")
    system = _system(tmp_path, wasi_guests["probe"], f"""
stdout = {{ host = "file", path = "{tmp_path}/out.txt", append_only = true }}
work = {{ host = "directory", path = "{work}", mount = "." }}
env = {{ host = "environment", args = ["read:hello.txt", "read:/work/hello.txt"] }}
""")
    r = run_wsuper("up", system, timeout=120)
    assert "finished app exit=0" in r.stderr, r.stdout + r.stderr
    # "." takes every path: /work/hello.txt is work/hello.txt inside the grant
    assert (tmp_path / "out.txt").read_text() == \
        "read hello.txt -> ok\n  hi there\nread /work/hello.txt -> ENOENT\n"


def test_sleeping_until_an_absolute_time_needs_the_clock(tmp_path, wasi_guests):
    system = _system(tmp_path, wasi_guests["probe"], """
stdout = { host = "log" }
clock = { host = "clock" }
env = { host = "environment", args = ["sleep"] }
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == ["sleep  -> ok"], r.stdout + r.stderr


def test_rename_within_a_directory_grant_and_not_across(tmp_path, wasi_guests):
    a, b, j = tmp_path / "a", tmp_path / "b", tmp_path / "j"
    for d in (a, b, j):
        d.mkdir()
    (a / "draft.txt").write_text("v2\n")
    (a / "final.txt").write_text("v1\n")
    (j / "log.txt").write_text("x\n")
    ops = ["rename:/a/draft.txt=/a/final.txt", "read:/a/final.txt",
           "rename:/a/final.txt=/b/final.txt", "rename:/j/log.txt=/j/gone.txt"]
    system = _system(tmp_path, wasi_guests["probe"], f"""
stdout = {{ host = "log" }}
a = {{ host = "directory", path = "{a}" }}
b = {{ host = "directory", path = "{b}" }}
j = {{ host = "directory", path = "{j}", append_only = true }}
env = {{ host = "environment", args = {json.dumps(ops)} }}
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == ["rename /a/draft.txt=/a/final.txt -> ok",    # the atomic-replace idiom
                         "read /a/final.txt -> ok", "  v2",
                         "rename /a/final.txt=/b/final.txt -> EXDEV",  # two grants
                         "rename /j/log.txt=/j/gone.txt -> EPERM"], r.stdout + r.stderr
    assert sorted(p.name for p in a.iterdir()) == ["final.txt"] and not list(b.iterdir())
    assert (j / "log.txt").read_text() == "x\n"


def test_releasing_a_grants_handle_leaves_its_descriptor_working(tmp_path, wasi_guests):
    (tmp_path / "a.txt").write_text("still here\n")
    system = _system(tmp_path, wasi_guests["probe"], f"""
stdout = {{ host = "log" }}
data = {{ host = "directory", path = "{tmp_path}" }}
env = {{ host = "environment", args = ["release:data", "release:stdout", "read:/data/a.txt",
                                       "release:data"] }}
""")
    r = run_wsuper("up", system, timeout=120)
    assert _lines(r) == ["release data -> 0", "release stdout -> 0", "read /data/a.txt -> ok",
                         "  still here", "release data -> -1"], r.stdout + r.stderr   # gone
    assert "finished app exit=0" in r.stderr


def test_a_wasi_policy_that_is_ambiguous_is_refused(tmp_path, wasi_guests):
    system = _system(tmp_path, wasi_guests["probe"], """
c1 = { host = "clock" }
c2 = { host = "clock" }
""")
    r = run_wsuper("check", system)
    assert r.returncode == 2
    assert "compartments.app.grants.c2: a WASI program takes its clock from one grant" in r.stderr
    system = _system(tmp_path, wasi_guests["probe"], 'stdout = { host = "random" }')
    r = run_wsuper("check", system)
    assert r.returncode == 2 and "stdout must be a log or file grant, not random" in r.stderr
