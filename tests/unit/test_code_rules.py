"""Rules of the code that a test can check by reading it."""
import ast
import os
import re

from tests.conftest import ROOT

#: The packages whose code runs in the supervisor, the zygote, the engines, or
#: the commands and harnesses the docs tell users to run.
PACKAGES = ("supervisor", "compartments", "capnp_schemas", "fuzz", "benchmarks")


def _python_files(packages=PACKAGES):
    for package in packages:
        for base, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(base, name)


def _select_calls(source: str) -> list[int]:
    """Lines that call select(2) through Python's `select` module.  A source without
    the word is not parsed: both shapes below name it (the rule read ~110,000 lines
    of syntax trees, 6.5 s of the suite, for the 24 files that do)."""
    lines = []
    if "select" not in source:
        return lines
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "select" and \
                any(alias.name == "select" for alias in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "select" and isinstance(node.func.value, ast.Name) and \
                node.func.value.id == "select":
            lines.append(node.lineno)
    return lines


def test_no_code_waits_with_select_which_refuses_descriptors_past_1023():
    """select(2) raises for a descriptor numbered past 1,023, and any process here may
    hold that many (a system of many grants, a supervisor started by a process that
    left descriptors open): the zygote waited on its control socket with it and
    ended ("the zygote is gone").  poll(2), epoll (selectors) or trio wait instead.
    The tests too: a test process holds what earlier tests left open, and one of
    test_zygote_compile's waits failed in CI ("filedescriptor out of range in
    select()") once the files before it ran in its worker."""
    found = [f"{os.path.relpath(path, ROOT)}:{line}"
             for path in _python_files(PACKAGES + ("tests",))
             for line in _select_calls(open(path, encoding="utf-8").read())]
    assert found == []


def test_the_rule_above_sees_each_way_of_calling_select():
    assert _select_calls("import select\nselect.select([0], [], [], 0)\n") == [2]
    assert _select_calls("from select import select\n") == [1]
    assert _select_calls("import select\nselect.poll()\nsel.select(1)\n") == []


def _buffered_line_reads(source: str) -> list[int]:
    """Lines that read a child's pipe line by line through its file object:
    `X.stdout.readline()` (or stderr's), or a loop over `X.stdout`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "readline" and isinstance(node.func.value, ast.Attribute) \
                and node.func.value.attr in ("stdout", "stderr"):
            lines.append(node.lineno)
        elif isinstance(node, (ast.For, ast.comprehension)) and \
                isinstance(node.iter, ast.Attribute) and node.iter.attr in ("stdout", "stderr"):
            lines.append(node.iter.lineno)
    return sorted(lines)


def test_tests_read_a_childs_lines_without_reading_ahead():
    """`proc.stdout.readline()` reads ahead into the file object's buffer, and
    `proc.communicate(timeout=...)` then reads the descriptor, never that buffer:
    what the child wrote just after the line was lost to the test, on a machine
    slow enough for it to be in the pipe already.  A signal test read `held`,
    then missed `SIGINT, stopping` (CI, now and then).  Tests read a child's lines
    with tests.conftest.read_line (the descriptor, a byte at a time) instead."""
    found = [f"{os.path.relpath(path, ROOT)}:{line}"
             for path in _python_files(("tests",))
             for line in _buffered_line_reads(open(path, encoding="utf-8").read())]
    assert found == []


def test_the_rule_above_sees_each_way_of_reading_ahead():
    assert _buffered_line_reads("p.stdout.readline()\nfor x in q.stdout:\n    pass\n") \
        == [1, 2]
    assert _buffered_line_reads("[x for x in self.proc.stderr]\n") == [1]
    assert _buffered_line_reads("s.makefile().readline()\nread_line(p)\n"
                                "sys.stdin.readline()\n") == []


def test_read_line_leaves_what_follows_the_line_to_communicate():
    """What the rule above stands on: a child that wrote two lines and ended (a
    machine slow enough for both to be in the pipe at the test's first read).
    Read as the tests read now, communicate() has the second; read through the
    file object's readline(), it was gone (the signal test's failure)."""
    import subprocess
    import sys

    from tests.conftest import read_line
    code = "print('held'); print('SIGINT, stopping')"
    for text in (True, False):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                text=text)
        proc.wait(60)
        assert read_line(proc) == ("held\n" if text else b"held\n")
        assert proc.communicate(timeout=60)[0] == ("SIGINT, stopping\n" if text
                                                    else b"SIGINT, stopping\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    proc.wait(60)
    assert getattr(proc.stdout, "readline")() == "held\n"
    assert proc.communicate(timeout=60)[0] == ""         # lost in the buffer


#: A Cap'n Proto file id (`@0x...;` at the head of a schema) in a test's text
_FILE_ID = re.compile(r"@0x([0-9a-fA-F]{16});")
#: ids test_c_reader loads in its worker and test_bindgen writes only for `wsuper
#: bindgen`, which loads them in a process of its own
_SHARED_IDS_ALLOWED = {"d1f0a3b2c4e5f603", "d1f0a3b2c4e5f6a1", "d1f0a3b2c4e5f6c1"}


def _file_ids_by_module(root: str) -> dict:
    """file id -> the test modules under `root` whose text writes it."""
    found: dict = {}
    for base, _, names in os.walk(root):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(base, name)
                for id_ in set(_FILE_ID.findall(open(path, encoding="utf-8").read())):
                    found.setdefault(id_.lower(), set()).add(os.path.relpath(path, ROOT))
    return found


def test_no_two_test_modules_write_a_schema_of_the_same_file_id():
    """capnp_schemas.load refuses a second file declaring an id a file loaded in the
    same process declared (a copy of a schema keeps its ids): test_interop's
    maker.capnp took test_call_json's id, and whichever of the two an xdist
    worker ran second failed at set-up (CI, 4 errors).  An id is one module's."""
    shared = {id_: sorted(mods) for id_, mods in _file_ids_by_module(
        os.path.join(ROOT, "tests")).items() if len(mods) > 1}
    assert set(shared) <= _SHARED_IDS_ALLOWED, {
        k: v for k, v in shared.items() if k not in _SHARED_IDS_ALLOWED}


#: tasks started straight into the system's nursery that catch every Exception
#: themselves (prober.Prober._quietly, _declare): no boundary needed
_GUARDED_INSIDE = {"_quiet_collect", "_quiet_push", "_declare", "_bounded"}


def _unbounded_starts(source: str) -> list[tuple[int, str]]:
    """(line, task) of each `X.nursery.start_soon(fn, ...)`: a task of the system's
    nursery started without Supervisor._task's boundary."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("start_soon", "start") \
                and (isinstance(node.func.value, ast.Attribute)
                     and node.func.value.attr == "nursery"
                     or isinstance(node.func.value, ast.Name)
                     and node.func.value.id == "nursery") and node.args:
            fn = node.args[0]
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "?")
            if name not in _GUARDED_INSIDE:
                found.append((node.lineno, name))
    return found


def test_every_task_of_the_systems_nursery_runs_behind_its_boundary():
    """An exception out of a task of the supervisor's nursery ended the supervisor and
    every compartment (r264: eight such tasks, each serving one peer).  Each is
    started by Supervisor._task (or, at start-up, `nursery.start` of _admin,
    _listen, _first_spawn, whose faults are start-up's), or catches everything
    itself."""
    startup = {"_admin", "_listen", "_first_spawn",
               # nested nurseries of a task behind the boundary: what they raise is
               # that task's (ForkedEngine.watch's, _io_pool's)
               "_ended", "_io_thread"}
    bad = []
    for package in ("supervisor",):
        for path in _python_files((package,)):
            with open(path) as f:
                source = f.read()
            if "nursery" not in source:
                continue
            bad += [f"{os.path.relpath(path, ROOT)}:{line}: {name}"
                    for line, name in _unbounded_starts(source) if name not in startup]
    assert not bad, bad


def test_the_rule_above_sees_a_task_started_without_its_boundary():
    assert _unbounded_starts("self.sup.nursery.start_soon(self._read_later, call)\n"
                             "self.nursery.start_soon(proc.watch)\n"
                             "nursery.start_soon(self._signals)\n"
                             "self._task('x', self._y)\n") == [
        (1, "_read_later"), (2, "watch"), (3, "_signals")]
