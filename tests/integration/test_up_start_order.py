"""What `wsuper up` does on the way to its first spawn, and in which order
(docs/performance.md, "Start-up, sixth pass"): the real command, its real zygote
and compiler children, with a few functions wrapped to note when they ran."""
import json
import subprocess
import sys

from tests.conftest import ROOT

#: `wsuper up` of the system given, noting: which module checks were started early
#: (zygote.start_in_a_compiler, if there is one) or run where prepare needs them
#: (zygote.in_a_compiler), and whether trio was imported by then; whether wasmtime
#: was imported by the first spawn
_HARNESS = """
import importlib.machinery, json, os, sys
sys.path.insert(0, {root!r})
from compartments import zygote
from supervisor import cli
seen = {{"early": [], "waited": [], "spawned": False}}
inside, pids = [], []
start = getattr(zygote, "start_in_a_compiler", None)
if start is not None:
    def start_in_a_compiler(work, path, *a, **k):
        child = start(work, path, *a, **k)
        if not inside:
            seen["early"].append([path, "trio" in sys.modules])
            pids.append(child.pid)
        return child
    zygote.start_in_a_compiler = start_in_a_compiler
real_in = zygote.in_a_compiler
def in_a_compiler(work, path, *a, **k):
    seen["waited"].append([path, "trio" in sys.modules])
    inside.append(1)
    try:
        return real_in(work, path, *a, **k)
    finally:
        inside.pop()
zygote.in_a_compiler = in_a_compiler
def patch(process):      # supervisor.process imports trio: wrapped as it is imported
    real_spawn = process.Zygote.spawn
    async def spawn(self, *a, **k):
        if not seen["spawned"]:
            seen["spawned"] = True
            seen["wasmtime_spawn"] = "wasmtime" in sys.modules
        return await real_spawn(self, *a, **k)
    process.Zygote.spawn = spawn
class Hook:
    @staticmethod
    def find_spec(name, path, target=None):
        if name != "supervisor.process":
            return None
        sys.meta_path.remove(Hook)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real_exec = spec.loader.exec_module
        def exec_module(module):
            real_exec(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Hook)
code = cli.main(["up", sys.argv[1]])
seen["left"] = [pid for pid in pids if os.path.exists(f"/proc/{{pid}}")]   # zombies too
print("SEEN " + json.dumps(seen), flush=True)
sys.exit(code)
"""


def _up(tmp_path, modules: list[str], each: int = 1) -> tuple[int, dict, str]:
    """`up` of a system of `each` compartments (programs) of each module."""
    lines = []
    for i, text in enumerate(modules):
        (tmp_path / f"m{i}.wat").write_text(text)
        lines += [f'[compartments.p{i}_{j}]\nmodule = "{tmp_path}/m{i}.wat"\n'
                  for j in range(each)]
    path = tmp_path / "system.toml"
    path.write_text("".join(lines))
    out = subprocess.run([sys.executable, "-c", _HARNESS.format(root=ROOT), str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    seen = [line for line in out.stdout.splitlines() if line.startswith("SEEN ")]
    assert seen, out.stdout + out.stderr
    return out.returncode, json.loads(seen[-1][5:]), out.stderr


QUIT = '(module (memory (export "memory") 1) (func (export "_start")))'


def test_up_checks_its_first_module_while_it_imports_what_the_system_runs_on(tmp_path):
    """`wsuper up` checked each module (a compile in a child of its own, ~20-25 ms for
    calc.wat) only after it had imported trio and the runtime (~70 ms), one after
    the other on the way to the first spawn.  The first module's check now starts
    before those imports and runs beside them on the other core (the zygote's
    compile of it too); prepare takes its answer where it would have started it,
    and starts no second child for it.  The other modules are checked as before,
    one child at a time."""
    code, seen, err = _up(tmp_path, [QUIT, QUIT.replace("1)", "2)")])
    assert code == 0, err
    first, second = str(tmp_path / "m0.wat"), str(tmp_path / "m1.wat")
    assert seen["early"] == [[first, False]], \
        f"the first module's check did not start before trio's import: {seen}"
    assert [path for path, _trio in seen["waited"]] == [second], seen


def test_up_of_a_system_of_one_module_never_imports_wasmtime_itself(tmp_path):
    """The supervisor imported wasmtime (~27 ms of its CPU before the first spawn)
    only to make the engine its module checks compile with, in children.  A system
    whose compartments share one module has that one checked in the child started
    early, which imports wasmtime itself: the supervisor reaches its first spawn
    without it.  (A second module's check is forked from the supervisor with
    wasmtime imported there, once, as before: the test above.)"""
    code, seen, err = _up(tmp_path, [QUIT], each=3)
    assert code == 0, err
    assert seen["wasmtime_spawn"] is False, "the supervisor imported wasmtime"


def test_up_refused_for_its_first_module_says_so_where_it_did(tmp_path):
    """A first module that is no module: the check started early says why, at the
    same key and in the same words as a check started in prepare (`wsuper check`
    starts none early), and `up` ends with 2, its child reaped."""
    code, seen, err = _up(tmp_path, ["(module (func (export \"_start\") (i32.add)))"])
    assert code == 2
    assert seen["early"], seen
    check = subprocess.run([sys.executable, "-m", "supervisor.cli", "check",
                            str(tmp_path / "system.toml")], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 2
    said = [line for line in err.splitlines() if "compartments.p0_0.module" in line]
    assert said and said[-1] in check.stderr, (err, check.stderr)


def test_up_refused_before_it_takes_the_early_check_ends_that_child(tmp_path):
    """A system refused before prepare takes the early check's answer (here: its
    first compartment exports an interface no schema declares, which is said
    before its module's check) ends that child and reaps it: `up` leaves no
    compiler running, nor a zombie, behind its refusal."""
    (tmp_path / "m0.wat").write_text(QUIT)
    path = tmp_path / "system.toml"
    path.write_text(f'[compartments.p]\nmodule = "{tmp_path}/m0.wat"\nexports = "Nope"\n')
    out = subprocess.run([sys.executable, "-c", _HARNESS.format(root=ROOT), str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    seen = json.loads([line for line in out.stdout.splitlines()
                       if line.startswith("SEEN ")][-1][5:])
    assert out.returncode == 2 and "unknown interface 'Nope'" in out.stderr, out.stderr
    assert seen["early"] and seen["left"] == [], seen


def test_the_zygote_collects_no_garbage_until_its_heap_is_frozen_and_then_does():
    """The zygote's imports and warm-up ran the cyclic collector too (CPU on the way
    to its first answer), and each collection freed blocks in pages every engine
    forked later shares and writes to (docs/performance.md, "Start-up, sixth
    pass").  It is off from the zygote's main() until serve() freezes the heap, on
    again from there.  A real zygote process, as the supervisor starts it, whose
    control socket is closed at once (it then ends)."""
    import os
    import socket
    code = ("import gc\n"
            "from compartments import zygote\n"
            "real_freeze, real_serve = gc.freeze, zygote.serve\n"
            "def freeze():\n"
            "    print('freeze', gc.isenabled(), flush=True)\n"
            "    real_freeze()\n"
            "gc.freeze = freeze\n"
            "def serve(control, pid):\n"
            "    print('serve', gc.isenabled(), flush=True)\n"
            "    real_serve(control, pid)\n"
            "    print('served', gc.isenabled(), flush=True)\n"
            "zygote.serve = serve\n"
            "zygote.main()\n")
    ours, theirs = socket.socketpair()
    with theirs:
        proc = subprocess.Popen([sys.executable, "-I", "-c", code, str(theirs.fileno()),
                                 str(os.getpid())], pass_fds=(theirs.fileno(),), env={},
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    ours.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split("\n")[:3] == ["serve False", "freeze False", "served True"], out + err
